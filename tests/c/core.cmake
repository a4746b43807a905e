# Core unit tests: router, HTTP parser glue and its limits, config.
eng_add_unit_test(test_router ${CMAKE_SOURCE_DIR}/tests/c/test_router.c ${CMAKE_SOURCE_DIR}/engine/router.c)
eng_add_unit_test(test_http ${CMAKE_SOURCE_DIR}/tests/c/test_http.c ${CMAKE_SOURCE_DIR}/engine/http.c)
eng_add_unit_test(test_config ${CMAKE_SOURCE_DIR}/tests/c/test_config.c ${CMAKE_SOURCE_DIR}/engine/config.c
                  ${CMAKE_SOURCE_DIR}/engine/http.c)
