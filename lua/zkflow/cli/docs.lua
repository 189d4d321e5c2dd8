-- zkflow.cli.docs: the man pages and the bash completion, made from the
-- command table that prints `--help` (zkflow.cli), so the three cannot
-- drift.  The build writes them (tools/cli-docs.lua):
--
--   zkflow.1             the global options, the commands that are not
--                        families (standalone, scheduler, ...), settings,
--                        environment, files, exit codes
--   zkflow-<family>.1    one per family (dags, runs, tasks, config, ...)
--   zkflow.bash          bash completion of commands, options, DAG ids,
--                        run ids and task ids (these asked of zkflow itself,
--                        with the store options already on the line)

local _M = {}

local concat = table.concat
local fmt = string.format

-- ---- roff ---------------------------------------------------------------------

-- Text as roff reads it literally: backslashes, and a leading '.' or "'"
-- that would make a line a request.
local function esc(s)
    s = tostring(s):gsub("\\", "\\e"):gsub("%-", "\\-")
    return s
end

local function line(s)
    s = esc(s)
    if s:find("^[.']") then s = "\\&" .. s end
    return s
end

local function opt_item(o)
    local left = (o[4] and ("-" .. o[4] .. ", ") or "") .. "--" .. o[1]
                 .. (o[2] and (" " .. o[2]) or "")
    return { ".TP", "\\fB" .. esc(left) .. "\\fR", line(o[3]) }
end

local function more_text(cmd)
    if type(cmd.more) == "function" then return cmd.more() end
    return cmd.more
end

-- The section of one command: its usage, help, more and options.
local function command_section(out, cmd, prefix)
    out[#out + 1] = ".SS \"zkflow " .. esc(prefix .. cmd.name) .. "\""
    out[#out + 1] = line(cmd.help)
    out[#out + 1] = ".PP"
    out[#out + 1] = "Usage: \\fBzkflow " .. esc(cmd.usage) .. "\\fR"
    local more = more_text(cmd)
    if more then
        out[#out + 1] = ".PP"
        for l in (more .. "\n"):gmatch("([^\n]*)\n") do
            out[#out + 1] = l == "" and ".PP" or line(l)
        end
    end
    if cmd.opts and #cmd.opts > 0 then
        out[#out + 1] = ".RS"
        for _, o in ipairs(cmd.opts) do
            for _, l in ipairs(opt_item(o)) do out[#out + 1] = l end
        end
        out[#out + 1] = ".RE"
    end
end

local function header(out, name, version, desc)
    out[#out + 1] = ".\\\" Generated from the command table of zkflow.cli "
                    .. "(lua/zkflow/cli/docs.lua): edit the table, not this file."
    out[#out + 1] = fmt(".TH %s 1 \"\" \"zkflow %s\" \"zkflow manual\"",
                        esc(name:upper()), esc(version))
    out[#out + 1] = ".SH NAME"
    out[#out + 1] = esc(name) .. " \\- " .. line(desc)
end

local function families(commands)
    local list = {}
    for _, c in ipairs(commands) do
        if c.sub then list[#list + 1] = c end
    end
    return list
end

local function see_also(out, commands, except)
    local refs = { "\\fBzkflow\\fR(1)" }
    for _, f in ipairs(families(commands)) do
        refs[#refs + 1] = "\\fBzkflow\\-" .. esc(f.name) .. "\\fR(1)"
    end
    local keep = {}
    for _, r in ipairs(refs) do
        if r ~= except then keep[#keep + 1] = r end
    end
    out[#out + 1] = ".SH SEE ALSO"
    out[#out + 1] = concat(keep, ", ")
end

-- zkflow(1).  `cli` is zkflow.cli (its commands, GLOBAL and settings).
function _M.main_page(cli, version)
    local out = {}
    header(out, "zkflow", version, "an Airflow-like workflow scheduler with Lua DAGs")
    out[#out + 1] = ".SH SYNOPSIS"
    out[#out + 1] = "\\fBzkflow\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR...]"
    out[#out + 1] = ".SH DESCRIPTION"
    out[#out + 1] = "zkflow runs DAGs of tasks written in Lua on one machine (an embedded "
                    .. "store) or as a cluster on ZooKeeper.  \\fBzkflow "
                    .. "\\fICOMMAND\\fB \\-\\-help\\fR prints what this page says "
                    .. "of a command."
    out[#out + 1] = ".SH COMMANDS"
    for _, c in ipairs(cli.commands) do
        if c.sub then
            out[#out + 1] = ".TP"
            out[#out + 1] = "\\fBzkflow " .. esc(c.name) .. "\\fR \\fICOMMAND\\fR"
            out[#out + 1] = line(c.help) .. "; see \\fBzkflow\\-" .. esc(c.name) .. "\\fR(1)."
        end
    end
    for _, c in ipairs(cli.commands) do
        if not c.sub then command_section(out, c, "") end
    end
    out[#out + 1] = ".SH OPTIONS"
    out[#out + 1] = "Global options may stand anywhere on the line."
    for _, o in ipairs(cli.GLOBAL) do
        for _, l in ipairs(opt_item(o)) do out[#out + 1] = l end
    end
    out[#out + 1] = ".SH SETTINGS"
    out[#out + 1] = "A global option that takes a value comes from the command line, "
                    .. "else the environment, else the settings file, else the DAG "
                    .. "folder a standalone recorded in its store, else "
                    .. "\\fBZKFLOW_HOME\\fR, else its default; \\fBzkflow "
                    .. "check\\-config\\fR shows each one and where it came from."
    out[#out + 1] = ".SH ENVIRONMENT"
    for _, o in ipairs(cli.settings.OPTIONS) do
        out[#out + 1] = ".TP"
        out[#out + 1] = "\\fB" .. esc(cli.settings.env_name(o[1])) .. "\\fR"
        out[#out + 1] = "as \\fB\\-\\-" .. esc(o[1]) .. "\\fR"
    end
    for _, e in ipairs({
        { "ZKFLOW_CONFIG", "the settings file (empty: none)" },
        { "ZKFLOW_HOME", "a folder whose zkflow.db and dags/ are the defaults" },
        { "ZKFLOW_LOG_LEVEL", "debug, info, warn or error: what the process logs "
          .. "to stderr" },
    }) do
        out[#out + 1] = ".TP"
        out[#out + 1] = "\\fB" .. esc(e[1]) .. "\\fR"
        out[#out + 1] = line(e[2])
    end
    out[#out + 1] = ".SH FILES"
    out[#out + 1] = ".TP"
    out[#out + 1] = "\\fI" .. esc(cli.settings.DEFAULT_FILE) .. "\\fR"
    out[#out + 1] = "the settings file: lines \\fIname\\fR = \\fIvalue\\fR naming the "
                    .. "global options (db, dags, root, zk, db\\-sync, session\\-timeout, "
                    .. "zk\\-auth, zk\\-acl, log\\-dir); \\(aq#\\(aq starts a comment; "
                    .. "a relative path is relative to the file."
    out[#out + 1] = ".TP"
    out[#out + 1] = "\\fI./zkflow.db\\fR, \\fI./dags\\fR"
    out[#out + 1] = "the embedded store and the DAG folder when nothing else names them."
    out[#out + 1] = ".SH EXIT STATUS"
    out[#out + 1] = "0 ok, 1 failed work (a failed run or task, a store error), "
                    .. "2 usage error."
    see_also(out, cli.commands, "\\fBzkflow\\fR(1)")
    return concat(out, "\n") .. "\n"
end

-- zkflow-<family>(1).
function _M.family_page(cli, fam, version)
    local out = {}
    header(out, "zkflow-" .. fam.name, version, fam.help)
    out[#out + 1] = ".SH SYNOPSIS"
    out[#out + 1] = "\\fBzkflow " .. esc(fam.name) .. "\\fR \\fICOMMAND\\fR "
                    .. "[\\fIARGS\\fR...] [\\fIOPTIONS\\fR]"
    out[#out + 1] = ".SH DESCRIPTION"
    out[#out + 1] = line(fam.help) .. "."
    local more = more_text(fam)
    if more then
        out[#out + 1] = ".PP"
        out[#out + 1] = line(more)
    end
    out[#out + 1] = "The global options (\\fB\\-\\-db\\fR, \\fB\\-\\-dags\\fR, "
                    .. "\\fB\\-\\-zk\\fR, ...) are in \\fBzkflow\\fR(1)."
    out[#out + 1] = ".SH COMMANDS"
    for _, c in ipairs(fam.sub) do command_section(out, c, fam.name .. " ") end
    out[#out + 1] = ".SH EXIT STATUS"
    out[#out + 1] = "0 ok, 1 failed work, 2 usage error."
    see_also(out, cli.commands, "\\fBzkflow\\-" .. esc(fam.name) .. "\\fR(1)")
    return concat(out, "\n") .. "\n"
end

-- Every page: {{name, text}, ...}.
function _M.pages(cli, version)
    local list = { { "zkflow.1", _M.main_page(cli, version) } }
    for _, f in ipairs(families(cli.commands)) do
        list[#list + 1] = { "zkflow-" .. f.name .. ".1", _M.family_page(cli, f, version) }
    end
    return list
end

-- ---- bash completion -------------------------------------------------------------

-- The positional words of a command's usage: "dags trigger DAG_ID [--conf
-- JSON]" -> {"DAG_ID"}; brackets and dots dropped.
local function positionals(cmd, depth)
    local words, i = {}, 0
    for w in cmd.usage:gmatch("%S+") do
        if w:sub(1, 2) == "--" or w:sub(1, 3) == "[--" or w == "|" or w:sub(1, 1) == "(" then
            break
        end
        i = i + 1
        if i > depth then
            words[#words + 1] = (w:gsub("[%[%]]", ""):gsub("%.%.%.$", ""))
        end
    end
    return words
end

local function opt_words(list, with_value)
    local w = {}
    for _, o in ipairs(list or {}) do
        if (o[2] ~= nil) == with_value then w[#w + 1] = "--" .. o[1] end
    end
    return concat(w, " ")
end

-- The completion script for bash.
function _M.completion(cli)
    local o = {}
    local function add(s) o[#o + 1] = s end
    add("# bash completion for zkflow: generated from the command table of")
    add("# zkflow.cli (lua/zkflow/cli/docs.lua).  DAG, run and task ids are asked")
    add("# of zkflow itself, with the store options already on the line.")
    add("")
    local top = {}
    for _, c in ipairs(cli.commands) do top[#top + 1] = c.name end
    add("_zkflow_global_valued='" .. opt_words(cli.GLOBAL, true) .. "'")
    add("_zkflow_global_flags='" .. opt_words(cli.GLOBAL, false) .. " -h -V'")
    add("")
    add("# _zkflow_spec PATH: sets verbs, vopts (options taking a value), fopts")
    add("# (flags) and pos (positional words) of command PATH (\"dags trigger\").")
    add("_zkflow_spec() {")
    add("    verbs= vopts= fopts= pos=")
    add("    case \"$1\" in")
    add("    '') verbs='" .. concat(top, " ") .. "' ;;")
    for _, c in ipairs(cli.commands) do
        if c.sub then
            local verbs = {}
            for _, s in ipairs(c.sub) do verbs[#verbs + 1] = s.name end
            add("    '" .. c.name .. "') verbs='" .. concat(verbs, " ") .. "' ;;")
            for _, s in ipairs(c.sub) do
                local shorts = {}
                for _, x in ipairs(s.opts or {}) do
                    if x[4] then shorts[#shorts + 1] = "-" .. x[4] end
                end
                add(fmt("    '%s %s') vopts='%s' fopts='%s' pos='%s' ;;", c.name, s.name,
                        opt_words(s.opts, true),
                        (opt_words(s.opts, false) .. " " .. concat(shorts, " ")):gsub("%s+$", ""),
                        concat(positionals(s, 2), " ")))
            end
        else
            add(fmt("    '%s') vopts='%s' fopts='%s' pos='%s' ;;", c.name,
                    opt_words(c.opts, true), opt_words(c.opts, false),
                    concat(positionals(c, 1), " ")))
        end
    end
    add("    esac")
    add("}")
    add("")
    add([==[
# _zkflow_ids KIND ARGS...: DAG, run or task ids, from zkflow --json
_zkflow_ids() {
    local kind=$1
    shift
    case "$kind" in
    DAG_ID) "${_zkflow_cmd[@]}" dags list --json 2>/dev/null |
                grep -o '"dag_id":"[^"]*"' | cut -d'"' -f4 ;;
    RUN_ID) [ -n "$1" ] && "${_zkflow_cmd[@]}" runs list "$1" --json 2>/dev/null |
                grep -o '"run_id":"[^"]*"' | cut -d'"' -f4 ;;
    TASK_ID) [ -n "$1" ] && "${_zkflow_cmd[@]}" dags show "$1" --json 2>/dev/null |
                grep -o '"task_id":"[^"]*"' | cut -d'"' -f4 ;;
    esac
}

_zkflow() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=
    [ "$COMP_CWORD" -gt 0 ] && prev=${COMP_WORDS[COMP_CWORD-1]}
    local path= verbs vopts fopts pos args=() i w
    local -a _zkflow_cmd=("${COMP_WORDS[0]}")
    COMPREPLY=()
    _zkflow_spec ''
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        case " $_zkflow_global_valued " in
        *" $w "*)
            # the store options ask the same store for ids
            _zkflow_cmd+=("$w" "${COMP_WORDS[i+1]}")
            i=$((i + 1))
            continue ;;
        esac
        case " $vopts " in *" $w "*) i=$((i + 1)); continue ;; esac
        case "$w" in
        -*) continue ;;
        esac
        if [ -n "$verbs" ] && case " $verbs " in *" $w "*) true ;; *) false ;; esac; then
            path=${path:+$path }$w
            _zkflow_spec "$path"
        else
            args+=("$w")
        fi
    done
    # the value of an option
    case " $_zkflow_global_valued $vopts " in
    *" $prev "*)
        case "$prev" in
        --dags|--log-dir) COMPREPLY=($(compgen -d -- "$cur")) ;;
        --db|--config) COMPREPLY=($(compgen -f -- "$cur")) ;;
        --state) COMPREPLY=($(compgen -W 'queued running success failed' -- "$cur")) ;;
        --db-sync) COMPREPLY=($(compgen -W 'off normal full extra' -- "$cur")) ;;
        --role) COMPREPLY=($(compgen -W 'viewer operator admin' -- "$cur")) ;;
        esac
        return 0 ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$vopts $fopts $_zkflow_global_valued $_zkflow_global_flags" -- "$cur"))
        return 0
    fi
    if [ -n "$verbs" ]; then
        COMPREPLY=($(compgen -W "$verbs" -- "$cur"))
        return 0
    fi
    local -a words=($pos)
    local n=${#args[@]} want
    want=${words[n]}
    if [ -z "$want" ] && [ "${#words[@]}" -gt 0 ]; then
        # FILE... and DAG_ID... take more
        want=${words[${#words[@]}-1]}
        [ "$path" = "dags push" ] || [ "$path" = "tasks clear" ] || return 0
    fi
    case "$want" in
    DAG_ID) COMPREPLY=($(compgen -W "$(_zkflow_ids DAG_ID)" -- "$cur")) ;;
    RUN_ID) COMPREPLY=($(compgen -W "$(_zkflow_ids RUN_ID "${args[0]}")" -- "$cur")) ;;
    TASK_ID) COMPREPLY=($(compgen -W "$(_zkflow_ids TASK_ID "${args[0]}")" -- "$cur")) ;;
    'FILE|DAG_ID') COMPREPLY=($(compgen -f -- "$cur") $(compgen -W "$(_zkflow_ids DAG_ID)" -- "$cur")) ;;
    FILE) COMPREPLY=($(compgen -f -- "$cur")) ;;
    DIR) COMPREPLY=($(compgen -d -- "$cur")) ;;
    esac
    return 0
}
complete -F _zkflow zkflow]==])
    return concat(o, "\n") .. "\n"
end

return _M
