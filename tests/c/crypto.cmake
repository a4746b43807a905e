# Tests of engine/keys.c, engine/lua_crypto.c and engine/lua_time.c.
set(ENG_CRYPTO_TEST_SOURCES ${CMAKE_SOURCE_DIR}/tests/c/test_crypto.c ${CMAKE_SOURCE_DIR}/engine/keys.c
    ${CMAKE_SOURCE_DIR}/engine/lua_crypto.c ${CMAKE_SOURCE_DIR}/engine/lua_time.c)
eng_add_unit_test(test_crypto ${ENG_CRYPTO_TEST_SOURCES} ${CMAKE_SOURCE_DIR}/engine/lua_json.c)

eng_add_unit_test(test_time ${CMAKE_SOURCE_DIR}/tests/c/test_time.c ${CMAKE_SOURCE_DIR}/engine/lua_time.c)

if(CMAKE_C_COMPILER_ID STREQUAL "Clang" AND APIENGINE_FUZZ)
  add_executable(fuzz_time ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_time.c ${CMAKE_SOURCE_DIR}/engine/lua_time.c
    ${CMAKE_SOURCE_DIR}/engine/error.c)
  target_include_directories(fuzz_time PRIVATE ${CMAKE_SOURCE_DIR}/engine)
  target_compile_options(fuzz_time PRIVATE ${ENG_WARNINGS} -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_time PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_time PRIVATE PkgConfig::LUA)
endif()
