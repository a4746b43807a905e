/* test.c - `apiengine test`: busted inside the engine (filled in by the testing work). */
#include <stdio.h>

int eng_test_main(int argc, char **argv);

int eng_test_main(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "apiengine test: not built yet\n");
  return 2;
}
