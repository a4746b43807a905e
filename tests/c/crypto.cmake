# Tests of engine/crypto.c and engine/keys.c (test_crypto) and engine/clock.c (test_time): the
# plain C primitives. The Lua modules over them, engine.crypto and engine.time, are covered by
# tests/spec/engine_crypto_spec.lua and tests/spec/engine_time_spec.lua.
eng_add_unit_test(test_crypto ${CMAKE_SOURCE_DIR}/tests/c/test_crypto.c ${CMAKE_SOURCE_DIR}/engine/crypto.c
                  ${CMAKE_SOURCE_DIR}/engine/keys.c)

eng_add_unit_test(test_time ${CMAKE_SOURCE_DIR}/tests/c/test_time.c ${CMAKE_SOURCE_DIR}/engine/clock.c)

# libFuzzer target for the RFC 3339 parser (no Lua); opt-in, Clang only (see ./dev fuzz).
if(CMAKE_C_COMPILER_ID STREQUAL "Clang" AND APIENGINE_FUZZ)
  add_executable(fuzz_time ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_time.c ${CMAKE_SOURCE_DIR}/engine/clock.c
    ${CMAKE_SOURCE_DIR}/engine/error.c)
  target_include_directories(fuzz_time PRIVATE ${CMAKE_SOURCE_DIR}/engine)
  target_compile_options(fuzz_time PRIVATE ${ENG_WARNINGS} -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_time PRIVATE -fsanitize=fuzzer,address,undefined)
endif()
