# Benchmark tools (bench/run builds them): not part of `all`, no tests.
add_executable(bench_yardstick EXCLUDE_FROM_ALL ${CMAKE_SOURCE_DIR}/bench/yardstick.c)
target_compile_options(bench_yardstick PRIVATE ${ENG_WARNINGS})
target_link_libraries(bench_yardstick PRIVATE eng_llhttp PkgConfig::UV)

add_executable(bench_idle_conns EXCLUDE_FROM_ALL ${CMAKE_SOURCE_DIR}/bench/idle_conns.c)
target_compile_options(bench_idle_conns PRIVATE ${ENG_WARNINGS})

add_executable(bench_metrics_cost EXCLUDE_FROM_ALL ${CMAKE_SOURCE_DIR}/bench/metrics_cost.c)
target_compile_options(bench_metrics_cost PRIVATE ${ENG_WARNINGS})
target_link_libraries(bench_metrics_cost PRIVATE eng_metrics)

add_executable(bench_metrics_scrape EXCLUDE_FROM_ALL ${CMAKE_SOURCE_DIR}/bench/metrics_scrape.c)
target_compile_options(bench_metrics_scrape PRIVATE ${ENG_WARNINGS})
