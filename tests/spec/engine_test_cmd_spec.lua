-- `apiengine test` itself: busted's flags pass through and the exit status tells failures.
local testing = require "engine.testing"

local SAMPLE = "tests/fixtures/busted/sample_case.lua"

local function run(args, env)
  local dir = testing.mkdtemp()
  local argv = { testing.exe(), "test" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local pid = testing.spawn(argv, dir .. "/out", env)
  local code = testing.wait(pid, 30000)
  if code == nil then testing.kill(pid, 9); testing.wait(pid, 5000) end
  local f = io.open(dir .. "/out")
  local out = f:read("a")
  f:close()
  testing.rmtree(dir)
  return code, out
end

describe("apiengine test", function()
  it("keeps the shell's APIENGINE_* settings away from the specs (a spec's settings win)", function()
    local code, out = run({ "-o", "plainTerminal", "tests/fixtures/busted/env_case.lua" },
      { APIENGINE_ADMIN_KEY = "x", APIENGINE_TOKEN_TTL_DAYS = "1" })
    assert.equal(0, code, out)
    assert.matches("1 success / 0 failures / 0 errors / 0 pending", out, 1, true)
  end)

  it("exits non-zero when a spec fails and reports the counts", function()
    local code, out = run { "-o", "plainTerminal", SAMPLE }
    assert.equal(1, code)
    assert.matches("2 successes / 1 failure / 0 errors / 0 pending", out, 1, true)
  end)

  it("passes --filter through and exits 0 when what runs passes", function()
    local code, out = run { "-o", "plainTerminal", "--filter", "real crypto", SAMPLE }
    assert.equal(0, code)
    assert.matches("1 success / 0 failures / 0 errors / 0 pending", out, 1, true)
  end)

  it("passes --tags and --exclude-tags through", function()
    local code, out = run { "-o", "plainTerminal", "--tags", "slow", SAMPLE }
    assert.equal(0, code)
    assert.matches("1 success / 0 failures", out, 1, true)
    code, out = run { "-o", "plainTerminal", "--exclude-tags", "slow", "--filter", "crypto", SAMPLE }
    assert.equal(0, code)
    assert.matches("1 success / 0 failures", out, 1, true)
  end)

  it("passes -o through to busted's output handlers", function()
    local code, out = run { "-o", "TAP", "--filter", "crypto", SAMPLE }
    assert.equal(0, code)
    assert.equal("ok 1 - sample passes with the real crypto module\n1..1\n", out)
  end)

  it("passes --pattern through for a directory", function()
    local code, out = run { "-o", "plainTerminal", "--pattern", "sample_case", "--filter", "crypto", "tests/fixtures/busted" }
    assert.equal(0, code)
    assert.matches("1 success / 0 failures", out, 1, true)
  end)

  it("prints its usage for --help", function()
    local code, out = run { "--help" }
    assert.equal(0, code)
    assert.matches("usage: apiengine test", out, 1, true)
  end)
end)
