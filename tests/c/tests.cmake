# C unit tests (ctest): each tests one module through its C entry points. The Lua-level
# behaviour of the modules is specified by the busted specs in tests/spec/.
eng_add_c_test(test_router eng_router)
eng_add_c_test(test_http eng_http)
eng_add_c_test(test_config eng_config)
eng_add_c_test(test_crypto eng_crypto)
eng_add_c_test(test_time eng_clock)
eng_add_c_test(test_db eng_db)
eng_add_c_test(test_json eng_lua)
eng_add_c_test(test_lua_db eng_lua)
eng_add_c_test(test_runtime eng_lua)
eng_add_c_test(test_limit eng_limit)
eng_add_c_test(test_pattern eng_lua)
eng_add_c_test(test_metrics eng_metrics)
eng_add_c_test(test_pg eng_pg)

# libFuzzer targets: every parser of the core.
eng_add_fuzz(fuzz_http eng_http)
eng_add_fuzz(fuzz_router eng_router)
eng_add_fuzz(fuzz_json eng_lua)
eng_add_fuzz(fuzz_time eng_clock)
eng_add_fuzz(fuzz_codec eng_crypto)
eng_add_fuzz(fuzz_pattern eng_lua)
eng_add_fuzz(fuzz_pgsql eng_pg)
