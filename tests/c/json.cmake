# engine.json: the C entry points of the JSON codec (engine/lua_json.c); its Lua-level cases
# are tests/spec/engine_json_spec.lua.
eng_add_unit_test(test_json ${CMAKE_SOURCE_DIR}/tests/c/test_json.c ${CMAKE_SOURCE_DIR}/engine/lua_json.c)

# libFuzzer target for the decoder (and encode/decode round trip); opt-in, Clang only:
#   CC=clang cmake -S . -B build-fuzz -DAPIENGINE_FUZZ=ON && cmake --build build-fuzz --target fuzz_json
if(CMAKE_C_COMPILER_ID STREQUAL "Clang" AND APIENGINE_FUZZ)
  add_executable(fuzz_json ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_json.c ${CMAKE_SOURCE_DIR}/engine/lua_json.c
                 ${CMAKE_SOURCE_DIR}/engine/text.c
                 ${CMAKE_SOURCE_DIR}/engine/buf.c ${CMAKE_SOURCE_DIR}/engine/error.c)
  target_compile_options(fuzz_json PRIVATE ${ENG_WARNINGS} -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_json PRIVATE -fsanitize=fuzzer,address,undefined)
  target_include_directories(fuzz_json PRIVATE ${CMAKE_SOURCE_DIR}/engine)
  target_link_libraries(fuzz_json PRIVATE PkgConfig::LUA m)
endif()
