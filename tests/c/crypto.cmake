# Tests of engine/keys.c and engine/lua_crypto.c (test_crypto) and engine/clock.c (test_time).
# The engine.time Lua module is covered by tests/spec/engine_time_spec.lua.
set(ENG_CRYPTO_TEST_SOURCES ${CMAKE_SOURCE_DIR}/tests/c/test_crypto.c ${CMAKE_SOURCE_DIR}/engine/keys.c
    ${CMAKE_SOURCE_DIR}/engine/lua_crypto.c ${CMAKE_SOURCE_DIR}/engine/lua_time.c ${CMAKE_SOURCE_DIR}/engine/clock.c)
eng_add_unit_test(test_crypto ${ENG_CRYPTO_TEST_SOURCES} ${CMAKE_SOURCE_DIR}/engine/lua_json.c)

eng_add_unit_test(test_time ${CMAKE_SOURCE_DIR}/tests/c/test_time.c ${CMAKE_SOURCE_DIR}/engine/clock.c)

# libFuzzer target for the RFC 3339 parser (no Lua); opt-in, Clang only (see ./dev fuzz).
if(CMAKE_C_COMPILER_ID STREQUAL "Clang" AND APIENGINE_FUZZ)
  add_executable(fuzz_time ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_time.c ${CMAKE_SOURCE_DIR}/engine/clock.c
    ${CMAKE_SOURCE_DIR}/engine/error.c)
  target_include_directories(fuzz_time PRIVATE ${CMAKE_SOURCE_DIR}/engine)
  target_compile_options(fuzz_time PRIVATE ${ENG_WARNINGS} -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_time PRIVATE -fsanitize=fuzzer,address,undefined)
endif()
