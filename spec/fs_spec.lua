-- core.listdir / stat / mkdirs / read_file / write_file through the C module.
local core = require "zkflow.core"

describe("core file helpers", function()
  local root

  before_each(function()
    root = os.tmpname()
    os.remove(root)
    assert.is_true(core.mkdirs(root))
  end)

  after_each(function()
    os.execute("rm -rf '" .. root .. "'")
  end)

  it("mkdirs creates missing parents and accepts existing directories", function()
    assert.is_true(core.mkdirs(root .. "/a/b//c/"))
    assert.is_true(core.mkdirs(root .. "/a/b/c"))
    assert.equal("dir", core.stat(root .. "/a/b/c").type)
  end)

  it("mkdirs fails on a file in the way", function()
    assert.is_true(core.write_file(root .. "/f", "x"))
    local ok, err = core.mkdirs(root .. "/f/sub")
    assert.is_nil(ok)
    assert.matches(root .. "/f/sub: ", err, 1, true)
    ok = core.mkdirs(root .. "/f")
    assert.is_nil(ok)
  end)

  it("write_file and read_file round-trip binary data", function()
    local data = "a\0b\255" .. string.rep("z", 200000)
    assert.is_true(core.write_file(root .. "/data.bin", data))
    assert.equal(data, core.read_file(root .. "/data.bin"))
    assert.is_true(core.write_file(root .. "/empty", ""))
    assert.equal("", core.read_file(root .. "/empty"))
  end)

  it("write_file replaces a file and leaves no temporary behind", function()
    assert.is_true(core.write_file(root .. "/f.json", "old"))
    assert.is_true(core.write_file(root .. "/f.json", "new"))
    assert.equal("new", core.read_file(root .. "/f.json"))
    assert.same({ "f.json" }, core.listdir(root))
  end)

  it("write_file fails in a missing directory", function()
    local ok, err, code = core.write_file(root .. "/nope/f", "x")
    assert.is_nil(ok)
    assert.matches("No such file or directory", err, 1, true)
    assert.equal("number", type(code))
  end)

  it("listdir returns sorted names without . and ..", function()
    for _, name in ipairs({ "b", "a", "c.lua", "A" }) do
      assert.is_true(core.write_file(root .. "/" .. name, name))
    end
    assert.is_true(core.mkdirs(root .. "/sub"))
    assert.same({ "A", "a", "b", "c.lua", "sub" }, core.listdir(root))
  end)

  it("listdir returns an empty array for an empty directory", function()
    assert.same({}, core.listdir(root))
  end)

  it("listdir and read_file return nil and an error for missing paths", function()
    local names, err = core.listdir(root .. "/missing")
    assert.is_nil(names)
    assert.matches("missing: No such file or directory", err, 1, true)
    local data
    data, err = core.read_file(root .. "/missing")
    assert.is_nil(data)
    assert.matches("No such file or directory", err, 1, true)
  end)

  it("stat reports size, mtime and type", function()
    assert.is_true(core.write_file(root .. "/f", "12345"))
    local st = core.stat(root .. "/f")
    assert.equal(5, st.size)
    assert.equal("file", st.type)
    assert.equal("float", math.type(st.mtime))
    assert.is_true(math.abs(os.time() - st.mtime) < 60)
    assert.equal("dir", core.stat(root).type)
    assert.equal("other", core.stat("/dev/null").type)
    local none, err = core.stat(root .. "/missing")
    assert.is_nil(none)
    assert.is_string(err)
  end)
end)
