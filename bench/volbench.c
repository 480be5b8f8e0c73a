/* bench/volume.py's measuring program, run in a container or on the host (static).
 * Usage: volbench DIR [MIB] [FILES]. Prints one JSON line: sequential write
 * (with fsync) and read MB/s of one file, and small files created (write and
 * close, one fsync of the directory at the end) and read back per second. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void drop_caches(void) {
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "3", 1) != 1) { /* not allowed here: reads may come from the page cache */ }
        close(fd);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *dir = argv[1];
    long mib = argc > 2 ? atol(argv[2]) : 256, files = argc > 3 ? atol(argv[3]) : 5000;
    static char block[1 << 20], small[4096];
    char path[4096];
    memset(block, 'x', sizeof block);
    memset(small, 's', sizeof small);
    snprintf(path, sizeof path, "%s/big", dir);
    double t = now();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror(path); return 1; }
    for (long i = 0; i < mib; i++)
        if (write(fd, block, sizeof block) != sizeof block) { perror("write"); return 1; }
    fsync(fd);
    close(fd);
    double write_s = now() - t;
    drop_caches();
    t = now();
    fd = open(path, O_RDONLY);
    long total = 0;
    ssize_t n;
    while ((n = read(fd, block, sizeof block)) > 0) total += n;
    close(fd);
    double read_s = now() - t;
    unlink(path);
    snprintf(path, sizeof path, "%s/small", dir);
    mkdir(path, 0755);
    t = now();
    for (long i = 0; i < files; i++) {
        snprintf(path, sizeof path, "%s/small/f%ld", dir, i);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, small, sizeof small) != sizeof small) { perror(path); return 1; }
        close(fd);
    }
    snprintf(path, sizeof path, "%s/small", dir);
    fd = open(path, O_RDONLY | O_DIRECTORY);
    fsync(fd);
    close(fd);
    double create_s = now() - t;
    drop_caches();
    t = now();
    for (long i = 0; i < files; i++) {
        snprintf(path, sizeof path, "%s/small/f%ld", dir, i);
        fd = open(path, O_RDONLY);
        if (fd < 0 || read(fd, small, sizeof small) != sizeof small) { perror(path); return 1; }
        close(fd);
    }
    double small_read_s = now() - t;
    for (long i = 0; i < files; i++) {
        snprintf(path, sizeof path, "%s/small/f%ld", dir, i);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/small", dir);
    rmdir(path);
    printf("{\"write_mbs\": %.1f, \"read_mbs\": %.1f, \"create_per_s\": %.0f, \"read_per_s\": %.0f, \"bytes\": %ld}\n",
           mib * 1.048576 / write_s, total / 1e6 / read_s, files / create_s, files / small_read_s, total);
    return 0;
}
