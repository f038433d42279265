/* tcp.h: what the TCP files share: tcp.c (accept, the connection pool, events, timers, commands),
 * tcp_connect.c (PROXY handshake, pick, connect) and tcp_move.c (moving bytes, closing).
 *
 * Everything here runs on one worker thread and touches only that worker's objects (engine.h). The
 * worker-side entry points loop.c calls (tcp_on_listen, tcp_on_event, ...) are in engine.h. */
#ifndef SLUICE_ENGINE_TCP_H
#define SLUICE_ENGINE_TCP_H

#include <stdbool.h>
#include <sys/epoll.h>

#include "engine.h"

#define CONN_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

/* tcp.c: a connection's pool and its endings before a backend */
void tcp_reset_close(int fd); /* close with SO_LINGER 0: the peer gets a reset (RST) rather than a FIN */
void tcp_conn_put(struct worker *w, struct conn *c);
void tcp_release_slot(struct conn *c);
void tcp_drop_backend(struct worker *w, struct conn *c);
void tcp_refuse(struct worker *w, struct conn *c, enum refused_reason reason);

/* tcp_connect.c: from the client's PROXY header to an established flow */
void tcp_handshake_read(struct worker *w, struct conn *c);
void tcp_start_connect(struct worker *w, struct conn *c);
void tcp_connect_next(struct worker *w, struct conn *c);
void tcp_connection_ready(struct worker *w, struct conn *c, bool failed);
void tcp_attempt_failed(struct worker *w, struct conn *c, int err);

/* tcp_move.c: the pools of pipes and buffers, moving bytes, closing an established flow */
int tcp_buf_take(struct worker_vip *wv, struct direction *d);
void tcp_buf_give(struct worker_vip *wv, struct direction *d);
void tcp_movers_release(struct worker_vip *wv, struct conn *c);
void tcp_pools_free(struct worker_vip *wv);
void tcp_pump(struct worker *w, struct conn *c);
void tcp_close_flow(struct worker *w, struct conn *c, enum closed_reason reason, bool reset);
void tcp_linger_check(struct worker *w, struct conn *c, bool now);

#endif
