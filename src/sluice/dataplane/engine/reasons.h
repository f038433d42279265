/* reasons.h: the reason enums of core/reasons.py (same names, same order; tests/dataplane/engine/test_reasons.py). */
#ifndef SLUICE_ENGINE_REASONS_H
#define SLUICE_ENGINE_REASONS_H

/* X(ENUM_SUFFIX, "python string"), in the order of core/reasons.py. */
#define REFUSED_REASONS(X)                                                                                   \
    X(MAX_CONNECTIONS, "max_connections")                                                                    \
    X(BAD_PROXY_HEADER, "bad_proxy_header")                                                                  \
    X(PROXY_HEADER_TIMEOUT, "proxy_header_timeout")                                                          \
    X(NO_BACKEND, "no_backend")                                                                              \
    X(CONNECT_FAILED, "connect_failed")                                                                      \
    X(CLIENT_GONE, "client_gone")                                                                            \
    X(NO_RESOURCES, "no_resources")                                                                          \
    X(PROXY_HEADER, "proxy_header")                                                                          \
    X(SHUTTING_DOWN, "shutting_down")                                                                        \
    X(INTERNAL_ERROR, "internal_error")                                                                      \
    X(ACCEPT_FAILED, "accept_failed")                                                                        \
    X(PROXY_NOT_ALLOWED, "proxy_not_allowed")

#define CLOSED_REASONS(X)                                                                                    \
    X(DONE, "done")                                                                                          \
    X(IDLE_TIMEOUT, "idle_timeout")                                                                          \
    X(CLIENT_RESET, "client_reset")                                                                          \
    X(CLIENT_ERROR, "client_error")                                                                          \
    X(BACKEND_RESET, "backend_reset")                                                                        \
    X(BACKEND_ERROR, "backend_error")                                                                        \
    X(SHUTDOWN, "shutdown")                                                                                  \
    X(BACKEND_DOWN, "backend_down")                                                                          \
    X(DRAIN_TIMEOUT, "drain_timeout")                                                                        \
    X(RESPONSES, "responses")                                                                                \
    X(EVICTED, "evicted")                                                                                    \
    X(NO_BACKEND, "no_backend")                                                                              \
    X(NO_RESOURCES, "no_resources")

#define CONNECT_ERRORS(X)                                                                                    \
    X(REFUSED, "refused")                                                                                    \
    X(TIMEOUT, "timeout")                                                                                    \
    X(UNREACHABLE, "unreachable")                                                                            \
    X(RESET, "reset")                                                                                        \
    X(OTHER, "other")

#define DROPPED_REASONS(X)                                                                                   \
    X(TRUNCATED, "truncated")                                                                                \
    X(TOO_LARGE, "too_large")                                                                                \
    X(SEND_BUFFER_FULL, "send_buffer_full")                                                                  \
    X(BACKEND_REFUSED, "backend_refused")                                                                    \
    X(NO_BACKEND, "no_backend")                                                                              \
    X(UNKNOWN_SOURCE, "unknown_source")                                                                      \
    X(KERNEL_OVERFLOW, "kernel_overflow")                                                                    \
    X(QUEUE_DELAY, "queue_delay")

/* The per-VIP counters of QUIC connection-ID routing (core/reasons.py QUIC; udp.h udp_counters). */
#define QUIC_COUNTERS(X)                                                                                     \
    X(ROUTED, "quic_routed")                                                                                 \
    X(FALLBACK, "quic_fallback")

#define REASON_ENUM_REFUSED(name, str) REFUSED_##name,
#define REASON_ENUM_CLOSED(name, str) CLOSED_##name,
#define REASON_ENUM_CONNECT(name, str) CONNECT_ERROR_##name,
#define REASON_ENUM_DROPPED(name, str) DROPPED_##name,

enum refused_reason { REFUSED_REASONS(REASON_ENUM_REFUSED) REFUSED__COUNT };
enum closed_reason { CLOSED_REASONS(REASON_ENUM_CLOSED) CLOSED__COUNT };
enum connect_error { CONNECT_ERRORS(REASON_ENUM_CONNECT) CONNECT_ERROR__COUNT };
enum dropped_reason { DROPPED_REASONS(REASON_ENUM_DROPPED) DROPPED__COUNT };
#define REASON_ENUM_QUIC(name, str) QUIC_##name,
enum quic_counter { QUIC_COUNTERS(REASON_ENUM_QUIC) QUIC__COUNT };

/* The python strings, indexed by the enums (counters.c). */
extern const char *const refused_names[REFUSED__COUNT];
extern const char *const closed_names[CLOSED__COUNT];
extern const char *const connect_error_names[CONNECT_ERROR__COUNT];

#endif
