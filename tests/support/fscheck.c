/* Checks, inside a container, that a directory behaves as programs expect. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int fail(const char *what) { printf("FAIL %s: %s\n", what, strerror(errno)); return 1; }

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    if (write(fd, text, strlen(text)) != (ssize_t)strlen(text)) return -1;
    if (fsync(fd) != 0) return -1;
    return close(fd);
}

int main(int argc, char **argv) {
    char a[512], b[512], h[512], s[512], buf[64];
    if (argc != 2) return 2;
    snprintf(a, sizeof a, "%s/a", argv[1]);
    snprintf(b, sizeof b, "%s/b", argv[1]);
    snprintf(h, sizeof h, "%s/h", argv[1]);
    snprintf(s, sizeof s, "%s/sock", argv[1]);
    if (write_file(a, "new") || write_file(b, "old")) return fail("write and fsync");
    printf("fsync ok\n");
    if (rename(a, b) != 0) return fail("rename");
    int fd = open(b, O_RDONLY);
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    if (n != 3 || memcmp(buf, "new", 3) != 0 || access(a, F_OK) == 0) { printf("FAIL rename content\n"); return 1; }
    printf("rename ok\n");
    struct stat st;
    if (link(b, h) != 0 || stat(b, &st) != 0 || st.st_nlink != 2) return fail("hard link");
    struct stat sh;
    stat(h, &sh);
    if (sh.st_ino != st.st_ino) { printf("FAIL hard link inode\n"); return 1; }
    printf("link ok\n");
    fd = open(b, O_RDWR);
    char *map = mmap(NULL, 3, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) return fail("shared mmap");
    memcpy(map, "MAP", 3);
    if (msync(map, 3, MS_SYNC) != 0) return fail("msync");
    munmap(map, 3);
    close(fd);
    fd = open(b, O_RDONLY);
    n = read(fd, buf, 3);
    close(fd);
    if (n != 3 || memcmp(buf, "MAP", 3) != 0) { printf("FAIL mmap content\n"); return 1; }
    printf("mmap ok\n");
    int server = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, s, sizeof addr.sun_path - 1);
    unlink(s);
    if (bind(server, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(server, 1) != 0) return fail("bind");
    pid_t child = fork();
    if (child == 0) {
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&addr, sizeof addr) != 0) _exit(3);
        _exit(write(c, "ping", 4) == 4 ? 0 : 4);
    }
    int conn = accept(server, NULL, NULL);
    n = read(conn, buf, 4);
    int status;
    waitpid(child, &status, 0);
    if (n != 4 || memcmp(buf, "ping", 4) != 0 || status != 0) { printf("FAIL unix socket (%d)\n", status); return 1; }
    if (stat(s, &st) != 0 || !S_ISSOCK(st.st_mode)) return fail("socket file");
    printf("unix socket ok\n");
    return 0;
}
