/* udpblast: send fixed-size UDP datagrams as fast as the guest can, for the
 * VM1 bench (busybox has no UDP sender; nc.openbsd is one process per
 * datagram).  Built static on the host by tools/guest/blaster.py and shipped
 * in the guest's initrd.
 *
 *   udpblast IP PORT SIZE SECONDS [COUNT]
 *
 * Sends SIZE-byte payloads to IP:PORT until SECONDS passed or COUNT were
 * sent (COUNT 0 or absent: no limit), then prints one line:
 *   sent=N bytes=B usec=T errors=E
 * N counts datagrams the kernel accepted (sendto() returned SIZE); E the
 * sendto() failures (ENOBUFS...), which are not retried.  The socket is
 * blocking: a full send buffer paces the sender instead of dropping.
 * Payload: a 64-bit sequence number (little endian) then zeros.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: udpblast IP PORT SIZE SECONDS [COUNT]\n");
        return 2;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
        fprintf(stderr, "udpblast: bad address %s\n", argv[1]);
        return 2;
    }
    size_t size = (size_t)atoi(argv[3]);
    if (size < 8 || size > 65507) {
        fprintf(stderr, "udpblast: size must be 8..65507\n");
        return 2;
    }
    uint64_t limit_us = (uint64_t)(atof(argv[4]) * 1e6);
    uint64_t count = argc > 5 ? strtoull(argv[5], NULL, 10) : 0;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
        perror("udpblast: socket");
        return 1;
    }
    unsigned char *buf = calloc(1, size);
    uint64_t sent = 0, errors = 0, t0 = now_us(), t = t0;
    while (!count || sent < count) {
        memcpy(buf, &sent, sizeof sent);
        if (send(fd, buf, size, 0) == (ssize_t)size)
            sent++;
        else
            errors++;
        /* reading the clock costs a vDSO call (more under TCG): every 64 sends */
        if (((sent + errors) & 63) == 0 && (t = now_us()) - t0 >= limit_us)
            break;
    }
    t = now_us();
    printf("sent=%llu bytes=%llu usec=%llu errors=%llu\n", (unsigned long long)sent,
           (unsigned long long)(sent * size), (unsigned long long)(t - t0), (unsigned long long)errors);
    return 0;
}
