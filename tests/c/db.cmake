# Storage: the SQLite connection layer (engine/db.c, its key sets in db_keyset.c, migrations in
# db_migrate.c) and the Lua module engine.db (engine/lua_db.c).
set(ENG_DB_SOURCES ${CMAKE_SOURCE_DIR}/engine/db.c ${CMAKE_SOURCE_DIR}/engine/db_keyset.c
                   ${CMAKE_SOURCE_DIR}/engine/db_migrate.c ${CMAKE_SOURCE_DIR}/engine/crypto.c)
eng_add_unit_test(test_db ${CMAKE_SOURCE_DIR}/tests/c/test_db.c ${ENG_DB_SOURCES})
eng_add_unit_test(test_lua_db ${CMAKE_SOURCE_DIR}/tests/c/test_lua_db.c ${ENG_DB_SOURCES}
                  ${CMAKE_SOURCE_DIR}/engine/lua_db.c)
