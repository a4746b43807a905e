-- wrk script: GET /row/{id} with a random id in 1..1000 (the rows seeded by schema/0001_bench.sql).
math.randomseed(os.time())

request = function()
  return wrk.format("GET", "/row/" .. math.random(1, 1000))
end
