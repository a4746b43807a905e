-- engine.db from Lua: parameters, type round trips, errors and their kinds, transactions
-- (nested too), exec_many, column-name cache staleness and key sets.
--
-- What needs the C side stays in tests/c/test_lua_db.c: that no statement is left mid-step and
-- no transaction open after failed calls (read from the SQLite handle), eng_db_after_request
-- rolling back what a script left open, a detached module (eng_lua_db_attach(L, NULL)), and two
-- workers (threads, each with its own connection) writing one file.
local spec = require "engine.spec"
local json = require "engine.json"

local SCRIPTS = "tests/fixtures/engine/scripts"
local SCHEMA = "tests/fixtures/engine/schema"

local null = json.null

-- eq(got, want, what): equal, and for numbers of the same subtype (integer or float), which
-- assert.equal alone does not tell apart (1 == 1.0).
local function eq(got, want, what)
  assert.equal(want, got, what)
  assert.equal(math.type(want), math.type(got), what)
end

-- fails(f, ...) -> the error f(...) raised; asserts that it raised one.
local function fails(f, ...)
  local ok, e = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return e
end

-- Each case uses its own tables, so the cases share one database without depending on each other.
describe("engine.db", function()
  local app = spec.app { scripts = SCRIPTS, schema = SCHEMA }

  -- The same calls on both backends (portable SQL): with APIENGINE_TEST_DB set, spec.app's
  -- database is that PostgreSQL one (engine_pgdb_spec.lua has what only PostgreSQL does).
  it("behaves the same on SQLite and PostgreSQL: types, NULL, parameters, kinds, tx, exec_many", function()
    local db = app.db
    eq(db.backend(), require("engine.testing").backend(), 'backend')
    db.exec('CREATE TABLE both_p (id INTEGER PRIMARY KEY, i BIGINT, f DOUBLE PRECISION, s TEXT NOT NULL, n TEXT,'
      .. ' pos INTEGER CHECK (pos > 0), ref INTEGER REFERENCES both_p(id), u TEXT UNIQUE)')
    eq(db.exec('INSERT INTO both_p (id, i, f, s, n) VALUES (?, ?, ?, ?, ?)', 1, math.maxinteger, 0.25, 'héllo', nil), 1,
      'changes')
    local r = db.one('SELECT id, i, f, s, n FROM both_p WHERE id = :id', {id = 1})
    eq(r.id, 1, 'id'); eq(r.i, math.maxinteger, 'big'); eq(r.f, 0.25, 'float'); eq(r.s, 'héllo', 'text')
    eq(r.n, null, 'NULL reads as json.null')
    r = db.one('SELECT ? = 1 AS t, ? = 1 AS f', 1, 2)
    eq(r.t, 1, 'true is 1'); eq(r.f, 0, 'false is 0')
    local rows = db.query('SELECT id FROM both_p WHERE id > ?', 99)
    eq(#rows, 0, 'no rows'); eq(require("engine.json").encode(rows), '[]', 'an empty array')
    eq(db.one('SELECT id FROM both_p WHERE id > 99'), nil, 'one: none')
    local kinds = {
      {'INSERT INTO both_p (id, s) VALUES (1, ?)', 'primary_key'},
      {'INSERT INTO both_p (id, s, u) VALUES (2, ?, NULL)', nil},
      {'INSERT INTO both_p (id, s, u) VALUES (3, ?, \'a\')', nil},
      {'INSERT INTO both_p (id, s, u) VALUES (4, ?, \'a\')', 'unique'},
      {'INSERT INTO both_p (id, s, pos) VALUES (5, ?, 0)', 'check'},
      {'INSERT INTO both_p (id, s, ref) VALUES (6, ?, 99)', 'foreign_key'},
      {'INSERT INTO both_p (id, s) VALUES (7, NULL) -- ?', 'not_null'},
    }
    for _, k in ipairs(kinds) do
      if k[1]:find('-- ?', 1, true) then
        local e = fails(db.exec, (k[1]:gsub(' %-%- %?', '')))
        eq(db.kind(e), k[2], k[1]); eq(db.is_error(e), true, k[1])
      elseif k[2] then
        local e = fails(db.exec, k[1], 'x')
        eq(db.kind(e), k[2], k[1]); eq(e.sql, k[1], 'sql'); eq(e.message:sub(1, 4), 'db: ', 'message')
      else
        eq(db.exec(k[1], 'x'), 1, k[1])
      end
    end
    -- tx: commit, rollback with the original error, a nested savepoint rolled back alone
    eq(db.tx(function() db.exec('INSERT INTO both_p (id, s) VALUES (10, ?)', 'a'); return 'done' end), 'done', 'commit')
    local e = fails(db.tx, function() db.exec('INSERT INTO both_p (id, s) VALUES (11, ?)', 'b'); error('mine', 0) end)
    eq(e, 'mine', 'original error')
    db.tx(function()
      db.exec('INSERT INTO both_p (id, s) VALUES (12, ?)', 'c')
      eq(pcall(db.tx, function() db.exec('INSERT INTO both_p (id, s) VALUES (13, ?)', 'd'); error('inner', 0) end), false,
        'inner failed')
    end)
    local ids = {}
    for _, row in ipairs(db.query('SELECT id FROM both_p WHERE id >= 10 ORDER BY id')) do ids[#ids + 1] = row.id end
    eq(table.concat(ids, ','), '10,12', 'committed rows')
    eq(db.exec_many('INSERT INTO both_p (id, s, n) VALUES (:id, :s, :n)', {{id = 20}, {id = 21, s = 'own'}}, {s = 'dflt'}),
      2, 'exec_many')
    eq(db.one('SELECT s FROM both_p WHERE id = 20').s, 'dflt', 'consts'); eq(db.one('SELECT n FROM both_p WHERE id = 21').n, null,
      'missing: NULL')
  end)

  it("binds and reads back every type, named and numbered parameters, and counts changes #sqlite", function()
    local db = app.db
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, f REAL, s TEXT, b BLOB, n TEXT)')
    local ch, id = db.exec('INSERT INTO t (i, f, s, b, n) VALUES (?, ?, ?, ?, ?)', 42, 1.5, 'hello', 'a\0b', nil)
    eq(ch, 1, 'changes'); eq(id, 1, 'rowid')
    local r = db.one('SELECT * FROM t WHERE id = ?', 1)
    eq(r.id, 1, 'id'); eq(r.i, 42, 'i'); eq(r.f, 1.5, 'f'); eq(r.s, 'hello', 's')
    eq(r.b, 'a\0b', 'b'); eq(#r.b, 3, '#b'); eq(r.n, null, 'n')
    local keys = 0; for _ in pairs(r) do keys = keys + 1 end; eq(keys, 6, 'keys incl. the null one')
    -- integer vs float both ways; REAL affinity turns 2 into 2.0; a float 3.0 in an INTEGER column is 3
    ch, id = db.exec('INSERT INTO t (i, f, s, n) VALUES (?, ?, ?, ?)', 3.0, 2, 'x\0y\0', null)
    eq(id, 2, 'rowid 2')
    r = db.one('SELECT i, f, s, n, typeof(s) AS ts FROM t WHERE id = 2')
    eq(r.i, 3, 'float 3.0 in INTEGER column'); eq(r.f, 2.0, 'integer 2 in REAL column')
    eq(r.s, 'x\0y\0', 'NULs in text'); eq(r.ts, 'text', 'bound as text'); eq(r.n, null, 'json null binds NULL')
    r = db.one('SELECT ? AS big, ? AS small, ? AS t, ? AS f, ? AS d, 0.5 AS h, x\'00ff\' AS blob, ? AS e',
      math.maxinteger, math.mininteger, true, false, 1e300, '')
    eq(r.big, math.maxinteger, 'maxinteger'); eq(r.small, math.mininteger, 'mininteger')
    eq(r.t, 1, 'true'); eq(r.f, 0, 'false'); eq(r.d, 1e300, 'double'); eq(r.h, 0.5, 'literal float')
    eq(r.blob, '\0\255', 'blob'); eq(r.e, '', 'empty string')
    -- named parameters, all three prefixes; a missing key binds NULL
    r = db.one('SELECT id FROM t WHERE i = :i AND s = @s AND f = $f', {i = 42, s = 'hello', f = 1.5})
    eq(r.id, 1, 'named')
    r = db.one('SELECT :x IS NULL AS missing, :y AS y, :y || :y AS yy', {y = 'a\0'})
    eq(r.missing, 1, 'missing named is NULL'); eq(r.y, 'a\0', 'named NUL'); eq(r.yy, 'a\0a\0', 'named reused')
    r = db.one('SELECT ?2 AS a, ?1 AS b', 'x', 'y')
    eq(r.a, 'y', '?2'); eq(r.b, 'x', '?1')
    -- query: array-marked, empty too
    local mt = debug.getregistry()['engine.json.array']
    local rows = db.query('SELECT id, i FROM t ORDER BY id')
    eq(#rows, 2, '#rows'); eq(getmetatable(rows), mt, 'array mt'); eq(rows[1].id, 1, 'row 1'); eq(rows[2].i, 3, 'row 2')
    rows = db.query('SELECT id FROM t WHERE id > ?', 99)
    eq(#rows, 0, 'empty'); eq(getmetatable(rows), mt, 'empty array mt'); eq(next(rows), nil, 'no entries')
    eq(db.one('SELECT id FROM t WHERE id > 99'), nil, 'one: no row')
    eq(select('#', db.one('SELECT id FROM t WHERE id > 99')), 1, 'one returns exactly nil')
    -- exec counts
    ch = db.exec('UPDATE t SET s = ? WHERE id > ?', 'z', 0); eq(ch, 2, 'update 2')
    ch, id = db.exec('UPDATE t SET s = ? WHERE id > ?', 'z', 99); eq(ch, 0, 'update none'); eq(id, 2, 'last rowid')
    ch = db.exec('CREATE TABLE other (x)'); eq(ch, 0, 'ddl changes nothing')
    ch = db.exec('SELECT * FROM t'); eq(ch, 0, 'exec of a select')
    ch = db.exec('DELETE FROM t WHERE id = 2'); eq(ch, 1, 'delete')
  end)

  it("raises on bad arguments and bad SQL with exact messages and db error tables #sqlite", function()
    local db = app.db
    local e = fails(db.one, 'SELECT ?', {})
    eq(e, 'cannot bind a table (parameter 1)', 'table param')
    e = fails(db.one, 'SELECT ?, ?', 1, print)
    eq(e, 'cannot bind a function (parameter 2)', 'function param')
    e = fails(db.one, 'SELECT ?, ?', 1)
    eq(e, 'statement has 2 parameters, got 1 value', 'too few')
    e = fails(db.one, 'SELECT ?3', 1)
    eq(e, 'statement has 3 parameters, got 1 value', '?NNN counts the highest')
    e = fails(db.one, 'SELECT 1', 2)
    eq(e, 'statement has 0 parameters, got 1 value', 'too many')
    e = fails(db.one, 'SELECT :a, ?', {a = 1})
    eq(e, 'parameter 2 is positional, but parameters were given by name', 'mixed')
    fails(db.one, 42)
    e = fails(db.query, 'SELEC 1')
    eq(db.is_error(e), true, 'is_error'); eq(db.kind(e), 'error', 'kind'); eq(e.code, 1, 'code')
    eq(e.message, 'db: near "SELEC": syntax error', 'message'); eq(e.sql, 'SELEC 1', 'sql')
    eq(tostring(e), 'db: near "SELEC": syntax error', '__tostring')
    e = fails(db.exec, 'SELECT 1; SELECT 2')
    eq(e.message, 'db: more than one SQL statement in one call', 'two statements')
    eq(db.is_error('x'), false, 'string'); eq(db.is_error({kind = 'unique'}), false, 'lookalike')
    eq(db.kind({}), nil, 'kind of non-error')
    -- a query failing on its second row (that it leaves no statement mid-step is checked from C)
    db.exec('CREATE TABLE ov (v INTEGER)'); db.exec('INSERT INTO ov VALUES (1), (2)')
    e = fails(db.query, 'SELECT CASE WHEN v > 1 THEN abs(-9223372036854775807 - 1) ELSE v END AS x FROM ov ORDER BY v')
    eq(e.message, 'db: integer overflow', 'overflow')
    eq(db.one('SELECT v FROM ov ORDER BY v').v, 1, 'one stops after a row')
  end)

  it("names the kind and extended code of each constraint failure #sqlite", function()
    local db = app.db
    db.exec('CREATE TABLE p (id INTEGER PRIMARY KEY, email TEXT UNIQUE, age INTEGER CHECK (age >= 0), '
      .. 'name TEXT NOT NULL)')
    db.exec('CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER NOT NULL REFERENCES p(id))')
    db.exec('INSERT INTO p VALUES (1, ?, 1, ?)', 'a@x', 'a')
    local function kind_of(sql, ...) local e = fails(db.exec, sql, ...); return db.kind(e), e.code, e.message end
    local k, c, m = kind_of('INSERT INTO p VALUES (2, ?, 1, ?)', 'a@x', 'b')
    eq(k, 'unique', 'unique'); eq(c, 2067, 'unique code'); eq(m, 'db: UNIQUE constraint failed: p.email', 'msg')
    k, c = kind_of('INSERT INTO p VALUES (1, ?, 1, ?)', 'b@x', 'b')
    eq(k, 'primary_key', 'pk'); eq(c, 1555, 'pk code')
    k, c = kind_of('INSERT INTO c VALUES (1, 99)')
    eq(k, 'foreign_key', 'fk'); eq(c, 787, 'fk code')
    k, c = kind_of('INSERT INTO p VALUES (3, ?, -1, ?)', 'c@x', 'c')
    eq(k, 'check', 'check'); eq(c, 275, 'check code')
    k, c = kind_of('INSERT INTO p VALUES (4, ?, 1, NULL)', 'd@x')
    eq(k, 'not_null', 'not null'); eq(c, 1299, 'not null code')
    db.exec('CREATE TRIGGER nope BEFORE INSERT ON c BEGIN SELECT RAISE(ABORT, \'no\'); END')
    k, c = kind_of('INSERT INTO c VALUES (2, 1)')
    eq(k, 'constraint', 'other constraint'); eq(c, 1811, 'trigger code')
    eq(db.one('SELECT count(*) AS n FROM p').n, 1, 'nothing inserted')
  end)

  it("commits db.tx, rolls it back on any error and re-raises that error unchanged, nested too #sqlite", function()
    local db = app.db
    db.exec('CREATE TABLE x (v INTEGER)')
    local function values() local out = {}
      for _, r in ipairs(db.query('SELECT v FROM x ORDER BY v')) do out[#out + 1] = r.v end
      return table.concat(out, ',') end
    local a, b, c = db.tx(function(p, q) db.exec('INSERT INTO x VALUES (?)', p); return p + q, 'ok' end, 1, 2)
    eq(a, 3, 'result 1'); eq(b, 'ok', 'result 2'); eq(c, nil, 'no third'); eq(values(), '1', 'committed')
    eq(select('#', db.tx(function() end)), 0, 'no results')
    local err = {}
    local e = fails(db.tx, function() db.exec('INSERT INTO x VALUES (2)'); error(err) end)
    eq(rawequal(e, err), true, 'same error table'); eq(values(), '1', 'rolled back')
    e = fails(db.tx, function() db.exec('INSERT INTO x VALUES (3)'); error('boom', 0) end)
    eq(e, 'boom', 'same error string'); eq(values(), '1', 'rolled back 2')
    e = fails(db.tx, function() db.exec('INSERT INTO x VALUES (4)'); db.exec('INSERT INTO nope VALUES (1)') end)
    eq(db.is_error(e), true, 'db error passes through'); eq(e.message, 'db: no such table: nope', 'its message')
    eq(values(), '1', 'rolled back 3')
    -- nested: the inner failure is caught, the outer commits
    db.tx(function()
      db.exec('INSERT INTO x VALUES (10)')
      local ok, ie = pcall(db.tx, function() db.exec('INSERT INTO x VALUES (11)'); error('inner', 0) end)
      eq(ok, false, 'inner failed'); eq(ie, 'inner', 'inner error')
      eq(values(), '1,10', 'inner rows gone inside')
      db.tx(function() db.exec('INSERT INTO x VALUES (12)') end)
    end)
    eq(values(), '1,10,12', 'outer kept, inner gone')
    -- an outer rollback also undoes a released inner savepoint
    fails(db.tx, function() db.tx(function() db.exec('INSERT INTO x VALUES (20)') end); error('outer') end)
    eq(values(), '1,10,12', 'outer rollback')
    -- a failing COMMIT (deferred foreign key) rolls back and raises a db error
    db.exec('CREATE TABLE par (id INTEGER PRIMARY KEY)')
    db.exec('CREATE TABLE chi (pid INTEGER REFERENCES par(id) DEFERRABLE INITIALLY DEFERRED)')
    e = fails(db.tx, function() db.exec('INSERT INTO chi VALUES (5)') end)
    eq(db.kind(e), 'foreign_key', 'commit fk'); eq(e.sql, 'COMMIT', 'commit sql')
    eq(db.one('SELECT count(*) AS n FROM chi').n, 0, 'commit failure rolled back')
    fails(db.tx, 42)
    -- yielding inside tx is refused and rolls back
    local co = coroutine.wrap(function()
      return pcall(db.tx, function() db.exec('INSERT INTO x VALUES (30)'); coroutine.yield() end)
    end)
    local ok = co(); eq(ok, false, 'yield refused'); eq(values(), '1,10,12', 'yield rolled back')
  end)

  it("gives fresh column names after the schema changes under a cached statement #sqlite", function()
    local db = app.db
    db.exec('CREATE TABLE r (a INTEGER)'); db.exec('INSERT INTO r VALUES (1)')
    local q = 'SELECT * FROM r'
    eq(db.one(q).a, 1, 'before')
    eq(db.query(q)[1].a, 1, 'before, cached')
    db.exec('ALTER TABLE r RENAME COLUMN a TO b')
    local row = db.one(q); eq(row.b, 1, 'renamed'); eq(row.a, nil, 'old name gone')
    db.exec('ALTER TABLE r ADD COLUMN c TEXT')
    row = db.query(q)[1]; eq(row.b, 1, 'b'); eq(row.c, null, 'added column present as null')
  end)

  it("runs exec_many once per row, named with consts or positional, and counts real changes #sqlite", function()
    local db = app.db
    db.exec('CREATE TABLE m (id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c TEXT NOT NULL)')
    -- named: each row's fields, then consts for what the row lacks; a missing one is NULL
    local n = db.exec_many('INSERT INTO m (a, b, c) VALUES (:a, :b, :c)',
      { {a = 'x', b = 1}, {b = 2}, {a = 'z', c = 'own'} }, {c = 'const', a = 'A'})
    eq(n, 3, 'changes')
    local rows = db.query('SELECT a, b, c FROM m ORDER BY id')
    eq(rows[1].a, 'x', 'r1 a'); eq(rows[1].b, 1, 'r1 b'); eq(rows[1].c, 'const', 'r1 const')
    eq(rows[2].a, 'A', 'r2 const a'); eq(rows[3].b, null, 'r3 missing b is NULL'); eq(rows[3].c, 'own', 'r3 c')
    -- positional: rows are arrays, a hole is NULL
    n = db.exec_many('INSERT INTO m (a, b, c) VALUES (?, ?, ?)', { {'p', 7, 'q'}, {nil, 8, 'r'} })
    eq(n, 2, 'positional changes')
    eq(db.one('SELECT count(*) AS n FROM m WHERE a IS NULL AND b = 8').n, 1, 'hole is NULL')
    eq(db.exec_many('UPDATE m SET b = b + 1 WHERE b = ?', { {7}, {99}, {1} }), 2, 'counts only real changes')
    eq(db.exec_many('INSERT INTO m (c) VALUES (?)', {}), 0, 'no rows')
    -- a failing row raises the db error; inside db.tx nothing stays
    local e = fails(db.tx, function()
      db.exec_many('INSERT INTO m (a, c) VALUES (?, ?)', { {'t1', 'ok'}, {'t2', nil}, {'t3', 'never'} })
    end)
    eq(db.kind(e), 'not_null', 'kind'); eq(db.one("SELECT count(*) AS n FROM m WHERE a LIKE 't%'").n, 0, 'rolled back')
    eq(tostring(fails(db.exec_many, 'INSERT INTO m (c) VALUES (?)', { {'a'}, 5 })):match('row 2 is a number') ~= nil,
      true, 'row type')
    eq(tostring(fails(db.exec_many, 'INSERT INTO m (c) VALUES (?)', { {'a', 'b'} })):match('more values') ~= nil,
      true, 'too many values')
    fails(db.exec_many, 'INSERT INTO m (c) VALUES (?)')
    fails(db.exec_many, 'INSERT INTO m (c) VALUES (?)', {}, 'consts')
  end)
end)
