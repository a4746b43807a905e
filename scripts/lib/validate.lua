-- lib/validate.lua - request body checks (API.md 1.3). Every check returns the value or
-- nil plus a message that names the field, ready for platform.fail(req, 400, msg).
--   local body, err = validate.body(req, "object")        -- invalid JSON / wrong type -> err
--   local name, err = validate.string(body, "CustomerName", { max = 200 })
local json = require "engine.json"

local M = {}

-- s without leading and trailing whitespace, in time linear in #s: the first non-space by
-- find, the last by one greedy match that backtracks at most once per byte. (gsub("%s+$", "")
-- and match("^%s*(.-)%s*$") are quadratic in a run of spaces: 60k of them held a worker 18 s
-- in one C call that no budget could stop.)
function M.trim(s)
  local i = s:find("%S")
  if not i then return "" end
  local _, j = s:find("^.*%S", i)
  return s:sub(i, j)
end

-- The decoded body when it is JSON of the expected kind ("object" or "array").
function M.body(req, kind)
  local v, err = req:json()
  if v == nil then
    if err == "empty body" then
      return nil, "request body is empty: expected a JSON " .. kind
    end
    return nil, "request body is not valid JSON: " .. tostring(err)
  end
  local is_table = type(v) == "table"
  local is_array = is_table and json.is_array(v)
  if (kind == "array" and not is_array) or (kind == "object" and (not is_table or is_array)) then
    return nil, "request body must be a JSON " .. kind
  end
  return v
end

-- A batch: the body is a JSON array of 1 to max items, named `what` in the message
-- ("request body must hold 1 to 100 users, not 101").
function M.batch(req, max, what)
  local v, err = M.body(req, "array")
  if not v then return nil, err end
  if #v < 1 or #v > max then
    return nil, string.format("request body must hold 1 to %d %s, not %d", max, what, #v)
  end
  return v
end

-- A required string: present, a string, not empty after trimming. opts:
--   max = N          at most N characters (UTF-8 code points, counted after trimming)
--   raw = true       return the value untrimmed (secrets, ids compared byte for byte)
function M.string(t, field, opts)
  opts = opts or {}
  local v = t[field]
  if v == nil or v == json.null then
    return nil, field .. " is required"
  end
  if type(v) ~= "string" then
    return nil, field .. " must be a string"
  end
  local trimmed = M.trim(v)
  if trimmed == "" then
    return nil, field .. " must not be empty"
  end
  if opts.max and (utf8.len(trimmed) or #trimmed) > opts.max then
    return nil, string.format("%s must be at most %d characters", field, opts.max)
  end
  return opts.raw and v or trimmed
end

-- An optional string: absent or null -> nil (no error); otherwise as M.string.
function M.optional_string(t, field, opts)
  local v = t[field]
  if v == nil or v == json.null then
    return nil
  end
  return M.string(t, field, opts)
end

-- A required boolean.
function M.boolean(t, field)
  local v = t[field]
  if v == nil or v == json.null then
    return nil, field .. " is required"
  end
  if type(v) ~= "boolean" then
    return nil, field .. " must be a boolean (true or false)"
  end
  return v
end

-- A plausible email address: one '@' with text before it, a dot inside the domain, no
-- spaces or control characters, at most 254 characters. Returns the trimmed address.
function M.email(t, field)
  local v, err = M.string(t, field)
  if not v then return nil, err end
  if #v > 254 then
    return nil, field .. " must be at most 254 characters"
  end
  local ok = not v:find("[%s%c]")
  local locl, domain = v:match("^([^@]+)@([^@]+)$")
  ok = ok and locl ~= nil and domain:find(".", 2, true) ~= nil
       and domain:sub(1, 1) ~= "." and domain:sub(-1) ~= "." and not domain:find("..", 1, true)
  if not ok then
    return nil, field .. " is not a valid email address"
  end
  return v
end

-- A value from a fixed set, compared case-insensitively; returns the set's spelling.
function M.one_of(t, field, choices)
  local v, err = M.string(t, field)
  if not v then return nil, err end
  local lower = v:lower()
  for _, c in ipairs(choices) do
    if lower == c:lower() then return c end
  end
  return nil, string.format("%s must be one of: %s", field, table.concat(choices, ", "))
end

return M
