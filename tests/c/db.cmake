# Storage: the SQLite connection layer (engine/db.c) and the Lua module engine.db (engine/lua_db.c).
eng_add_unit_test(test_db ${CMAKE_SOURCE_DIR}/tests/c/test_db.c ${CMAKE_SOURCE_DIR}/engine/db.c)
eng_add_unit_test(test_lua_db ${CMAKE_SOURCE_DIR}/tests/c/test_lua_db.c ${CMAKE_SOURCE_DIR}/engine/db.c
                  ${CMAKE_SOURCE_DIR}/engine/lua_db.c)
