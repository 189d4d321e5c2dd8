-- zkflow.text: text shown to people, made valid UTF-8 in one place (the
-- http operator's response text, the log copies kept in the history).
local concat = table.concat

local _M = {}

-- valid(s) → s with every byte that is not part of valid UTF-8 replaced by
-- U+FFFD, as Python's requests does for response.text.
function _M.valid(s)
    if utf8.len(s) then return s end
    local out, pos = {}, 1
    while pos <= #s do
        local n, bad = utf8.len(s, pos)
        if n then
            out[#out + 1] = s:sub(pos)
            break
        end
        out[#out + 1] = s:sub(pos, bad - 1)
        out[#out + 1] = "\239\191\189"
        pos = bad + 1
    end
    return concat(out)
end

return _M
