/* udp_send.c: sending a run of datagrams to one destination in one syscall, and counting drops.
 *
 * A run is what one read gave for one session: the datagrams of one client to its backend (from a
 * listen batch, GRO segments included) or one backend's replies to its client. Its head of datagrams of
 * one size, and at most one shorter after them, goes as one UDP GSO send (UDP_SEGMENT): the stack routes
 * and queues it once, and the kernel cuts it into those same datagrams (on the wire, or at the
 * receiving socket on loopback), so the peer sees exactly what sendmmsg would have sent.
 * Otherwise (no such head of two, a PROXY v2 header before each, the kernel refused GSO) it is one sendmmsg
 * to a client, or one send per datagram to a backend: a backend's refusal (ICMP port unreachable)
 * fails the next send on its connected socket once, and sendmmsg would lose it past the first.
 * A GSO run to a backend that just went is lost whole (one ICMP); the next send sees the refusal.
 * A kernel that refuses a segment size is not asked for that size or a larger one again (gso_below).
 */
#define _GNU_SOURCE
#include "udp.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h: the control message carries the segment size as a u16 */
#endif

#define GSO_BYTES 60000 /* at most in one GSO send: under the 64 KiB of one IP/UDP length */

void udp_count_drop(struct udp_wv *u, int err)
{
    switch (err) {
    case EAGAIN:
    case ENOBUFS:
        CTR_ADD(u->counters.dropped[DROPPED_SEND_BUFFER_FULL], 1);
        break;
    case EMSGSIZE:
        CTR_ADD(u->counters.dropped[DROPPED_TOO_LARGE], 1);
        break;
    case ECONNREFUSED:
        CTR_ADD(u->counters.dropped[DROPPED_BACKEND_REFUSED], 1);
        break;
    default:
        CTR_ADD(u->counters.dropped_errno[err > 0 && err < UDP_ERRNO_MAX ? err : EIO], 1);
        break;
    }
}

/* The run's longest head that makes one GSO send (datagrams of the first one's size, then at most one
 * shorter), sent: how many (>= 2), 0 (nothing sent: *err is why; the caller counts the first and sends
 * the rest again), -1 no such head of 2 or more, or GSO refused (send another way). */
static int send_gso(struct udp_wv *u, int fd, const struct sockaddr_storage *to, socklen_t tolen, const struct iovec *iov,
                    int n, int *err)
{
    size_t size = iov[0].iov_len, total = 0;
    if (size == 0 || size >= u->gso_below)
        return -1;
    int head = 0;
    while (head < n && iov[head].iov_len == size && total + size <= GSO_BYTES)
        total += iov[head++].iov_len;
    if (head < n && iov[head].iov_len > 0 && iov[head].iov_len < size && total + iov[head].iov_len <= GSO_BYTES)
        total += iov[head++].iov_len;
    if (head < 2)
        return -1;
    union {
        uint8_t buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr m = {.msg_name = (void *)to, .msg_namelen = to != NULL ? tolen : 0};
    m.msg_iov = (struct iovec *)iov;
    m.msg_iovlen = (size_t)head;
    m.msg_control = control.buf;
    m.msg_controllen = sizeof(control.buf);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t segment = (uint16_t)size;
    memcpy(CMSG_DATA(cm), &segment, sizeof(segment));
    if (sendmsg(fd, &m, MSG_DONTWAIT) >= 0)
        return head;
    if (errno == EINVAL || errno == EMSGSIZE) { /* this segment size is too large for the path */
        u->gso_below = (uint32_t)size;
        return -1;
    }
    if (errno == EOPNOTSUPP || errno == ENOPROTOOPT || errno == EIO) { /* no UDP GSO here */
        u->gso_below = 0;
        return -1;
    }
    *err = errno;
    return 0;
}

int udp_send_run(struct udp_wv *u, int fd, const struct sockaddr_storage *to, socklen_t tolen, const uint8_t *header,
                 size_t header_len, const struct iovec *iov, int n, int *err)
{
    *err = 0;
    if (n > UDP_RUN_MAX)
        n = UDP_RUN_MAX;
    if (header_len == 0) {
        int sent = send_gso(u, fd, to, tolen, iov, n, err);
        if (sent >= 0)
            return sent;
    }
    if (to == NULL) { /* connected: a refusal is reported once, and sendmmsg loses it after the first */
        struct iovec parts[2] = {{(void *)header, header_len}, iov[0]};
        struct msghdr one = {.msg_iov = header_len ? parts : parts + 1, .msg_iovlen = header_len ? 2 : 1};
        if (sendmsg(fd, &one, MSG_DONTWAIT) >= 0)
            return 1;
        *err = errno;
        return 0;
    }
    struct mmsghdr out[UDP_RUN_MAX]; /* to a client: never a header */
    for (int i = 0; i < n; i++)
        out[i].msg_hdr = (struct msghdr){
            .msg_name = (void *)to, .msg_namelen = tolen, .msg_iov = (struct iovec *)&iov[i], .msg_iovlen = 1};
    int sent = sendmmsg(fd, out, (unsigned)n, MSG_DONTWAIT);
    if (sent <= 0) {
        *err = sent < 0 ? errno : EAGAIN;
        return 0;
    }
    return sent;
}
