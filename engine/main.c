#include <stdio.h>
int main(void) { puts("apiengine " APIENGINE_VERSION); return 0; }
