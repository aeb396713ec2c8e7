/*
 * memcpy_check: copy and checksum N MiB with glibc's memcpy (argv[1]; 0: a 4 KiB copy, for a quick process).
 * Built with gcc -static by tests/test_linux_xstate.py and run inside a Linux guest.  glibc picks its
 * AVX2/EVEX memcpy from the CPUID ring 3 sees; the copy is done in odd-sized pieces so the vector loads
 * and stores of one piece meet page faults on fresh destination pages (the guest kernel switches tasks
 * there) while another process copies too.  Exit 0 and "ok" when the copy matches, 1 and "BAD" when not.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    unsigned mib = argc > 1 ? (unsigned)atoi(argv[1]) : 0;
    size_t n = mib ? (size_t)mib << 20 : 4096;
    uint64_t *a = malloc(n), *b = malloc(n);
    if (!a || !b) {
        puts("memcpy_check: out of memory");
        return 2;
    }
    uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)&mib, want = 0, got = 0;
    for (size_t i = 0; i < n / 8; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        a[i] = x;
        want += x * (i + 1);
    }
    for (size_t off = 0; off < n;) {
        size_t len = 3 * 4096 + 1234;
        if (off + len > n)
            len = n - off;
        memcpy((char *)b + off, (char *)a + off, len);
        off += len;
    }
    for (size_t i = 0; i < n / 8; i++)
        got += b[i] * (i + 1);
    if (mib)
        printf("memcpy_check %u MiB: %s %016llx %016llx\n", mib, got == want ? "ok" : "BAD",
               (unsigned long long)want, (unsigned long long)got);
    return got == want ? 0 : 1;
}
