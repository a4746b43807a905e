-- engine.time from Lua: the binding over engine/clock.c (now, format, parse) and its
-- argument checks. The C functions themselves are tested in tests/c/test_time.c.
local spec = require "engine.spec"
local time = require "engine.time"

describe("engine.time", function()
  after_each(function() spec.clock.reset() end)

  it("honours the frozen clock, formats integers only, parses strictly and round-trips", function()
    spec.clock.freeze(1718445600000)
    assert.equal(1718445600000, time.now(), "now honours the frozen clock")
    assert.equal("integer", math.type(time.now()), "now is an integer")
    assert.equal("1970-01-01T00:00:00.000Z", time.format(0), "format 0")
    assert.equal("2024-06-15T10:00:00.000Z", time.format(1718445600000.0), "integral float accepted")
    assert.is_false(pcall(time.format, 1.5), "format raises on 1.5")
    assert.is_false(pcall(time.format, "0"), "format raises on a string")
    assert.is_false(pcall(time.format), "format raises without argument")
    local ms, is_date = time.parse("2024-06-15T10:00:00+05:30")
    assert.equal(1718425800000, ms, "parse date-time")
    assert.equal(false, is_date, "parse date-time is not a date")
    ms, is_date = time.parse("2024-02-29")
    assert.equal(1709164800000, ms, "parse date")
    assert.equal(true, is_date, "parse date is a date")
    local v, err = time.parse("2024-02-30")
    assert.is_nil(v, "parse error")
    assert.equal("day out of range for month", err, "parse error message")
    v, err = time.parse("")
    assert.is_nil(v, "empty")
    assert.equal("empty string", err, "empty message")
    assert.is_false(pcall(time.parse, 20240101), "parse raises on a number")
    assert.equal(1718445600123, (time.parse(time.format(1718445600123))), "round trip")
  end)
end)
