-- The README's curl walk-through, run as printed against a real server: its
-- output must be exactly the output the README shows.
local spec = require "engine.spec"
local testing = require "engine.testing"

local function section(text, name)
  local pat = name:gsub("%-", "%%-")
  local block = text:match("<!%-%- " .. pat .. ":begin %-%->\n```%a*\n(.-)\n```\n<!%-%- " .. pat .. ":end %-%->")
  assert(block, "README.md has no " .. name .. " block")
  return block
end

describe("README walk-through", function()
  local srv = spec.server { workers = 2 }

  it("prints what the README says, against a real server", function()
    local f = assert(io.open("README.md"))
    local readme = f:read("a")
    f:close()
    local script = section(readme, "walkthrough")
    local expected = section(readme, "walkthrough-output")
    assert.truthy(script:find("http://127.0.0.1:8080", 1, true))
    script = script:gsub("http://127%.0%.0%.1:8080", srv.url)
    local dir = testing.mkdtemp()
    local sh = assert(io.open(dir .. "/walk.sh", "w"))
    sh:write(script, "\n")
    sh:close()
    local ok = os.execute("cd " .. dir .. " && bash -eu walk.sh > out.txt 2>&1")
    local out = assert(io.open(dir .. "/out.txt")):read("a")
    testing.rmtree(dir)
    assert.is_true(ok, out)
    assert.equal(expected, (out:gsub("\n$", "")))
  end)
end)
