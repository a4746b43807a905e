-- lib/customers.lua - what both customer envelopes share.
--   customers.delete(id)  removes the customer and everything under it in one transaction:
--                         apps, their settings and users (ON DELETE CASCADE through apps) and
--                         the customer's call records (calls.customer_id cascades too).
local db = require "engine.db"

local M = {}

function M.delete(id)
  return db.tx(function()
    -- Spelled out rather than left to the cascade alone, so the order is visible here.
    db.exec("DELETE FROM calls WHERE customer_id = ?", id)
    db.exec("DELETE FROM apps WHERE customer_id = ?", id)
    return db.exec("DELETE FROM customers WHERE id = ?", id)
  end)
end

return M
