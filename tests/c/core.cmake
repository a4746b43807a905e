# Core unit tests: router, HTTP parser glue and its limits, config; the runtime's protected glue.
eng_add_unit_test(test_router ${CMAKE_SOURCE_DIR}/tests/c/test_router.c ${CMAKE_SOURCE_DIR}/engine/router.c)
# test_http also covers http_response.c, whose request ids need the CSPRNG (lua_crypto.c and
# what it links against).
eng_add_unit_test(test_http ${CMAKE_SOURCE_DIR}/tests/c/test_http.c ${CMAKE_SOURCE_DIR}/engine/http.c
                  ${CMAKE_SOURCE_DIR}/engine/http_response.c ${CMAKE_SOURCE_DIR}/engine/lua_crypto.c
                  ${CMAKE_SOURCE_DIR}/engine/keys.c ${CMAKE_SOURCE_DIR}/engine/lua_time.c
                  ${CMAKE_SOURCE_DIR}/engine/lua_json.c)
eng_add_unit_test(test_config ${CMAKE_SOURCE_DIR}/tests/c/test_config.c ${CMAKE_SOURCE_DIR}/engine/config.c
                  ${CMAKE_SOURCE_DIR}/engine/http.c ${CMAKE_SOURCE_DIR}/engine/lua_config.c)
eng_add_c_test(test_runtime ${CMAKE_SOURCE_DIR}/tests/c/test_runtime.c)

# libFuzzer targets for the HTTP layer's parsers (requests, query strings, forms, header checks) and the
# router; opt-in, Clang only (see ./dev fuzz).
if(CMAKE_C_COMPILER_ID STREQUAL "Clang" AND APIENGINE_FUZZ)
  foreach(t http router)
    add_executable(fuzz_${t} ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_${t}.c ${CMAKE_SOURCE_DIR}/engine/${t}.c
                   ${CMAKE_SOURCE_DIR}/engine/buf.c ${CMAKE_SOURCE_DIR}/engine/error.c)
    target_compile_options(fuzz_${t} PRIVATE ${ENG_WARNINGS} -fsanitize=fuzzer,address,undefined)
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_include_directories(fuzz_${t} PRIVATE ${CMAKE_SOURCE_DIR}/engine)
    target_link_libraries(fuzz_${t} PRIVATE eng_llhttp)
  endforeach()
endif()
