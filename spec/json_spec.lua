-- core.json_encode / json_decode / null / base64_* through the C module.
local core = require "zkflow.core"

local encode, decode = core.json_encode, core.json_decode

local function nest(depth)
  local t = {}
  local top = t
  for _ = 2, depth do
    local inner = {}
    t[1] = inner
    t = inner
  end
  return top
end

describe("core.json_encode", function()
  it("encodes scalars at the top level", function()
    assert.equal("1", encode(1))
    assert.equal("1.5", encode(1.5))
    assert.equal('"x"', encode("x"))
    assert.equal("true", encode(true))
    assert.equal("null", encode(nil))
    assert.equal("null", encode(core.null))
  end)

  it("keeps integers as integers and floats as floats", function()
    assert.equal("[3,3.0,-0.25]", encode({ 3, 3.0, -0.25 }))
    assert.equal(tostring(math.maxinteger), encode(math.maxinteger))
  end)

  it("encodes a table with keys 1..n as an array", function()
    assert.equal('[1,"a",true]', encode({ 1, "a", true }))
  end)

  it("encodes a table with holes or other keys as an object", function()
    assert.equal('{"1":1,"3":3}', encode({ [1] = 1, [3] = 3 }, { sort_keys = true }))
    assert.equal('{"1":"a","k":"v"}', encode({ "a", k = "v" }, { sort_keys = true }))
    assert.equal('{"-1":0}', encode({ [-1] = 0 }))
  end)

  it("encodes an empty table as an object unless marked as an array", function()
    assert.equal("{}", encode({}))
    assert.equal("[]", encode(setmetatable({}, { __jsontype = "array" })))
    assert.equal('{"1":"a"}', encode(setmetatable({ "a" }, { __jsontype = "object" })))
  end)

  it("encodes core.null inside tables as null", function()
    assert.equal('[1,null,2]', encode({ 1, core.null, 2 }))
    assert.equal('{"a":null}', encode({ a = core.null }))
  end)

  it("sorts keys when asked", function()
    assert.equal('{"a":1,"b":2,"c":{"x":1,"y":2}}',
                 encode({ c = { y = 2, x = 1 }, b = 2, a = 1 }, { sort_keys = true }))
  end)

  it("pretty-prints when asked", function()
    assert.equal('{\n  "a": [\n    1,\n    2\n  ]\n}', encode({ a = { 1, 2 } }, { pretty = true }))
  end)

  it("escapes control characters and embedded NULs", function()
    assert.equal('"a\\u0000b\\n"', encode("a\0b\n"))
  end)

  it("writes floats as %.17g that still read as floats", function()
    assert.equal("[1.0,-0.0,100.0,0.0]", encode({ 1.0, -0.0, 100.0, 0.0 }))
    assert.equal("0.10000000000000001", encode(0.1))
    assert.equal("0.33333333333333331", encode(1 / 3))
    assert.equal("9007199254740992.0", encode(2.0 ^ 53))
    assert.equal("10000000000000000.0", encode(1e16))
    assert.equal("1.2345678901234568e17", encode(123456789012345678.0))
    assert.equal("1e21", encode(1e21))
    assert.equal("1.0000000000000001e300", encode(1e300))
    assert.equal("1.4999999999999999e-7", encode(1.5e-7))
    assert.equal("4.9406564584124654e-324", encode(5e-324))
    assert.equal("-9.2233720368547758e18", encode(-2.0 ^ 63))
    for _, x in ipairs({ 0.1, 1 / 3, 1767225600.123456, 1e-300, 2.0 ^ 60, -123.5 }) do
      local back = decode(encode(x))
      assert.equal("float", math.type(back))
      assert.equal(x, back)
    end
  end)

  it("writes integers at the edges of their range", function()
    assert.equal("[-9223372036854775808,9223372036854775807,0,-1]",
                 encode({ math.mininteger, math.maxinteger, 0, -1 }))
  end)

  it("encodes nested arrays and objects", function()
    assert.equal('[[1,[2,[3,[]]]],{"a":[{}]}]',
                 encode({ { 1, { 2, { 3, setmetatable({}, { __jsontype = "array" }) } } },
                          { a = { {} } } }))
    assert.equal('{"a":{"b":{"c":[true,false,null]}}}',
                 encode({ a = { b = { c = { true, false, core.null } } } }))
  end)

  it("escapes quotes, backslashes and control characters as jansson does", function()
    assert.equal('"\\"\\\\\\b\\f\\n\\r\\t"', encode('"\\\b\f\n\r\t'))
    assert.equal('"\\u0001\\u001F\\u000B"', encode("\1\31\11"))
    assert.equal('"\127"', encode("\127"))
  end)

  it("leaves / and non-ASCII characters as they are", function()
    assert.equal('"a/b"', encode("a/b"))
    assert.equal('"caf\u{e9} \u{4e2d} \u{1F600} \u{10FFFF}"',
                 encode("caf\u{e9} \u{4e2d} \u{1F600} \u{10FFFF}"))
    assert.equal('{"\u{e9}":"\u{4e2d}"}', encode({ ["\u{e9}"] = "\u{4e2d}" }))
  end)

  it("refuses overlong forms, surrogates and code points above U+10FFFF", function()
    for _, s in ipairs({ "\xc0\x80", "\xe0\x80\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                         "\xc3", "x\xe4\xb8", "\x80", "\xf5\x80\x80\x80" }) do
      local ok, err = pcall(encode, { s })
      assert.is_false(ok)
      assert.matches("json: $[1]: string is not valid UTF-8", err, 1, true)
    end
  end)

  it("names integer keys of objects in the error path", function()
    local ok, err = pcall(encode, { [5] = { x = 0 / 0 }, k = 1 })
    assert.is_false(ok)
    assert.matches("json: $.5.x: cannot encode NaN or infinity", err, 1, true)
  end)

  it("refuses a key conflict with sort_keys too", function()
    assert.has_error(function() encode({ [1] = "a", ["1"] = "b", x = 1 }, { sort_keys = true }) end)
    assert.has_error(function() encode({ a = 1, ["-3"] = 1, [-3] = 2 }) end)
    assert.equal('{"01":1,"1":2}', encode({ ["01"] = 1, [1] = 2 }, { sort_keys = true }))
  end)

  it("sorts keys bytewise, integer keys as their digits", function()
    assert.equal('{"":0,"10":1,"9":2,"A":3,"a":4,"ab":5}',
                 encode({ a = 4, ab = 5, A = 3, [9] = 2, [10] = 1, [""] = 0 }, { sort_keys = true }))
  end)

  it("pretty-prints empty tables, nesting and sorted keys like jansson", function()
    assert.equal("{}", encode({}, { pretty = true }))
    assert.equal("[]", encode(setmetatable({}, { __jsontype = "array" }), { pretty = true }))
    assert.equal('{\n  "a": {},\n  "b": [\n    1,\n    {\n      "c": null\n    }\n  ]\n}',
                 encode({ b = { 1, { c = core.null } }, a = {} }, { pretty = true, sort_keys = true }))
  end)

  it("encodes long strings and many keys, and again after an error", function()
    local long = string.rep("\u{e9}x\n", 50000)
    assert.equal(long, decode(encode(long)))
    local t = {}
    for i = 1, 3000 do t["k" .. i] = i end
    assert.same(t, decode(encode(t)))
    assert.has_error(function() encode({ long, print }) end)
    assert.equal('{"a":[1,2]}', encode({ a = { 1, 2 } }))
  end)

  it("refuses invalid UTF-8, naming the key path", function()
    local ok, err = pcall(encode, { a = { b = { "x", "\xff" } } })
    assert.is_false(ok)
    assert.matches("json: $.a.b[2]: string is not valid UTF-8", err, 1, true)
    ok, err = pcall(encode, { ["\xfe"] = 1 })
    assert.is_false(ok)
    assert.matches("not valid UTF-8", err, 1, true)
  end)

  it("refuses NaN and infinity", function()
    assert.has_error(function() encode(0 / 0) end)
    local ok, err = pcall(encode, { x = math.huge })
    assert.is_false(ok)
    assert.matches("json: $.x: cannot encode NaN or infinity", err, 1, true)
  end)

  it("refuses functions, userdata and odd keys", function()
    assert.has_error(function() encode({ f = print }) end)
    assert.has_error(function() encode({ [true] = 1 }) end)
    assert.has_error(function() encode({ [1.5] = 1 }) end)
  end)

  it("refuses a key that is both an integer and a string", function()
    assert.has_error(function() encode({ [1] = "a", ["1"] = "b", x = 1 }) end)
  end)

  it("refuses a table marked as array with other keys", function()
    assert.has_error(function() encode(setmetatable({ k = 1 }, { __jsontype = "array" })) end)
  end)

  it("encodes 200 levels and refuses 201 and cycles, without crashing", function()
    assert.equal(string.rep("[", 199) .. "{}" .. string.rep("]", 199), encode(nest(200)))
    local ok, err = pcall(encode, nest(201))
    assert.is_false(ok)
    assert.matches("nested deeper than 200", err, 1, true)
    local cyclic = {}
    cyclic.self = cyclic
    assert.has_error(function() encode(cyclic) end)
  end)
end)

describe("core.json_decode", function()
  it("decodes integers as integers and reals as floats", function()
    local v = decode('[1, 2.0, -3, 1e2]')
    assert.equal("integer", math.type(v[1]))
    assert.equal("float", math.type(v[2]))
    assert.equal(-3, v[3])
    assert.equal(100.0, v[4])
    assert.equal("float", math.type(v[4]))
  end)

  it("decodes objects and arrays as tables", function()
    local v = decode('{"a": {"b": [true, false, "s"]}, "n": 0}')
    assert.same({ true, false, "s" }, v.a.b)
    assert.equal(0, v.n)
  end)

  it("decodes null as core.null, at the top level too", function()
    local v = decode('{"a": null, "b": [null]}')
    assert.equal(core.null, v.a)
    assert.equal(core.null, v.b[1])
    assert.equal(core.null, decode("null"))
  end)

  it("decodes scalars at the top level", function()
    assert.equal("x", decode('"x"'))
    assert.equal(12, decode("12"))
    assert.is_true(decode("true"))
  end)

  it("keeps NULs inside strings", function()
    assert.equal("a\0b", decode('"a\\u0000b"'))
  end)

  it("returns nil and a located message on bad input", function()
    local v, err = decode('{"a": 1,\n "b": }')
    assert.is_nil(v)
    assert.matches("^json: line 2 column %d+: ", err)
    v, err = decode("")
    assert.is_nil(v)
    assert.matches("^json: line %d+ column %d+: ", err)
    assert.is_nil((decode("[1] x")))
    assert.is_nil((decode("{'a': 1}")))
  end)

  it("decodes escapes, surrogate pairs and raw UTF-8", function()
    assert.equal('"\\/\b\f\n\r\t', decode('"\\"\\\\\\/\\b\\f\\n\\r\\t"'))
    assert.equal("\u{1F600}\u{e9}", decode('"\\ud83d\\uDE00\u{e9}"'))
    assert.equal(string.rep("\u{e9}", 300), decode('"' .. string.rep("\\u00e9", 300) .. '"'))
  end)

  it("refuses lone surrogates, bad escapes, control characters and bad UTF-8", function()
    for _, s in ipairs({ '"\\ud800"', '"\\udc00"', '"\\ud800\\u0041"', '"\\x"', '"\\u12"',
                         '"a\1"', '"\xff"', '"\xed\xa0\x80"', '"abc', "\xff" }) do
      local v, err = decode(s)
      assert.is_nil(v)
      assert.matches("^json: line 1 column %d+: ", err)
    end
  end)

  it("reads numbers as jansson does", function()
    assert.equal(0, decode("-0"))
    assert.equal("integer", math.type(decode("-0")))
    assert.equal("-0.0", tostring(decode("-0.0")))
    assert.equal(math.mininteger, decode("-9223372036854775808"))
    assert.equal(math.maxinteger, decode("9223372036854775807"))
    assert.equal(0.0, decode("1e-400"))
    assert.equal(0.1, decode("0.1000000000000000055511151231257827021181583404541015625"))
    for _, s in ipairs({ "9223372036854775808", "-9223372036854775809", "1e400", "01", "1.", ".5",
                         "+1", "1e", "-", "0x10", "NaN", "Infinity" }) do
      local v, err = decode(s)
      assert.is_nil(v, s)
      assert.matches("^json: line 1 column %d+: ", err)
    end
  end)

  it("keeps the last of duplicate keys and refuses NUL in keys", function()
    assert.equal(2, decode('{"a":1,"a":2}').a)
    local v, err = decode('{"a\\u0000b":1}')
    assert.is_nil(v)
    assert.matches("NUL byte in object key not supported", err, 1, true)
  end)

  it("refuses trailing commas, missing separators and trailing text", function()
    -- a raw NUL byte too, which jansson skipped
    for _, s in ipairs({ "[1,]", "{\"a\":1,}", "[1 2]", "{\"a\" 1}", "{1:2}", "[", "{", "tru", "nulll",
                         "[1] x", "1\0" }) do
      assert.is_nil((decode(s)), s)
    end
  end)

  it("decodes 200 levels and refuses 201 without crashing", function()
    local v = decode(string.rep("[", 200) .. string.rep("]", 200))
    assert.equal("table", type(v))
    local bad, err = decode(string.rep("[", 201) .. string.rep("]", 201))
    assert.is_nil(bad)
    assert.matches("nested deeper than 200", err, 1, true)
    assert.is_nil((decode(string.rep("[", 100000))))
  end)

  it("round-trips values through encode", function()
    local docs = {
      '{"a":[1,2.5,"x",null,true,false],"b":{"c":{}},"d":[]}',
      '[[],{},[[]],""]',
      '{"k":-9223372036854775808,"u":"\u{e9}\u{4e2d}"}',
    }
    for _, doc in ipairs(docs) do
      assert.equal(doc, encode(decode(doc), { sort_keys = true }))
    end
    assert.equal("\u{e9}\u{4e2d}", decode('"\\u00e9\\u4e2d"'))
    local t = { name = "zkflow", list = { 1, 2, 3 }, nested = { deep = { 0.1 } } }
    assert.same(t, decode(encode(t)))
  end)
end)

describe("core.base64", function()
  it("encodes with padding", function()
    assert.equal("", core.base64_encode(""))
    assert.equal("Zg==", core.base64_encode("f"))
    assert.equal("Zm8=", core.base64_encode("fo"))
    assert.equal("Zm9v", core.base64_encode("foo"))
    assert.equal("Zm9vYmFy", core.base64_encode("foobar"))
  end)

  it("round-trips every byte", function()
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local all = table.concat(bytes)
    for n = 0, 7 do
      local s = all:sub(1, 250 + n)
      assert.equal(s, core.base64_decode(core.base64_encode(s)))
    end
  end)

  it("decodes with or without padding and across line breaks", function()
    assert.equal("foob", core.base64_decode("Zm9vYg=="))
    assert.equal("foob", core.base64_decode("Zm9vYg"))
    assert.equal("foobar", core.base64_decode("Zm9v\nYmFy\n"))
  end)

  it("returns nil and a message on bad input", function()
    local v, err = core.base64_decode("Zm9v!")
    assert.is_nil(v)
    assert.matches("base64: invalid character '!' at offset 4", err, 1, true)
    assert.is_nil((core.base64_decode("Zm9vY")))
    assert.is_nil((core.base64_decode("Zg=a")))
    assert.is_nil((core.base64_decode("Z===")))
    assert.is_nil((core.base64_decode("Zg===")))
  end)
end)
