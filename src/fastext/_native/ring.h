/*
 * fastext ring: a single-producer / single-consumer byte ring of
 * variable-length records, built inside a caller-provided buffer that is
 * usually shared memory mapped by two processes.
 *
 * Pure C11 (<stdatomic.h>) plus Linux futexes; no Python.h.  Every function
 * returns an fx_status; nothing here allocates, aborts or prints.
 *
 * Roles: exactly one producer (push side) and one consumer (pop side) may be
 * active on a ring at a time.  Each side keeps a private fx_ring handle; the
 * shared state lives in the buffer.  A process killed at any instruction
 * leaves the ring readable: the only shared writes are single atomic stores
 * of monotonically increasing counters (see docs/ring.md).
 */
#ifndef FASTEXT_RING_H
#define FASTEXT_RING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fx_status {
    FX_OK = 0,
    FX_EMPTY = 1,       /* nothing to read (not an error)                  */
    FX_FULL = 2,        /* not enough free space now (not an error)        */
    FX_TIMEOUT = 3,     /* a wait ran out of time                          */
    FX_INTERRUPTED = 4, /* a wait was interrupted by a signal handler       */
    FX_TOO_BIG = 5,     /* record longer than fx_ring_max_record()          */
    FX_CORRUPT = 6,     /* shared state fails validation                    */
    FX_BAD_ARG = 7,     /* caller error: size, alignment, capacity, NULL    */
    FX_STALE = 8,       /* the ring was reset after this handle attached    */
} fx_status;

/* Capacity of the data area: a power of two in [FX_RING_MIN_CAPACITY,
 * FX_RING_MAX_CAPACITY]. */
#define FX_RING_MIN_CAPACITY 64u
#define FX_RING_MAX_CAPACITY (1u << 30)

/* Bytes before the data area (magic, counters, doorbells; see ring.c). */
#define FX_RING_HEADER_SIZE 640u

/* Records start on this boundary, so payloads are 8-byte aligned. */
#define FX_RING_ALIGN 8u

/* Default bounded spin before a futex sleep (see docs/ring.md, "Spin"). */
#define FX_RING_DEFAULT_SPIN 0u
#define FX_RING_MAX_SPIN 20000u

/* Longest single futex sleep: a wait re-checks the ring at least this often,
 * so a lost wake-up costs at most this stall (see ring.c, "Sleeps are
 * bounded"). */
#define FX_RING_MAX_SLEEP_NS 100000000LL

struct fx_ring_shared;

/* Process-local handle.  Treat as opaque; it lives wherever the caller likes
 * (stack, Python object).  Never place it in shared memory. */
typedef struct fx_ring {
    struct fx_ring_shared *shm;
    unsigned char *data;
    uint64_t capacity;      /* copied at attach: never re-read from shm  */
    uint64_t mask;
    uint32_t generation;    /* shm generation seen at attach/reset        */
    uint32_t spin;          /* pause iterations before sleeping           */
    /* producer-private */
    uint64_t cached_head;   /* last head seen; free space is >= this view */
    uint64_t wpos;          /* write position while a batch is staged     */
    uint64_t staged;        /* records staged, not yet published          */
    /* consumer-private */
    uint64_t cached_tail;   /* last tail seen; readable bytes >= this     */
    uint64_t rpos;          /* read position while records are held       */
    uint64_t held;          /* records read, not yet released to producer */
    uint64_t peek_next;     /* rpos after the record last peeked          */
    int peeked;             /* peek_next is valid                         */
} fx_ring;

typedef struct fx_ring_stats {
    uint64_t capacity;
    uint64_t head;            /* bytes consumed since init/reset          */
    uint64_t tail;            /* bytes published since init/reset         */
    uint64_t pushed;          /* records published                        */
    uint64_t popped;          /* records consumed                         */
    uint64_t producer_sleeps; /* futex sleeps by the producer (ring full) */
    uint64_t consumer_sleeps; /* futex sleeps by the consumer (empty)     */
    uint64_t producer_unsignalled; /* capped sleeps that found space nobody signalled */
    uint64_t consumer_unsignalled; /* capped sleeps that found records nobody signalled */
    uint32_t generation;      /* bumped by every reset                    */
    uint32_t consumer_waiting; /* 1 while the consumer sleeps (or is about to) */
    uint32_t producer_waiting; /* 1 while the producer sleeps (or is about to) */
} fx_ring_stats;

/* Human-readable name of a status ("FX_FULL", ...). */
const char *fx_status_name(fx_status st);

/* Bytes a buffer needs for a ring of `capacity`; 0 if capacity is invalid. */
size_t fx_ring_required_size(uint32_t capacity);

/* Largest payload one record may carry: capacity / 2 - 8.  Bounding records
 * at half the data area guarantees a record fits whatever the wrap position
 * (see ring.c, space_needed). */
uint32_t fx_ring_max_record(const fx_ring *r);

/* Format `mem` (8-byte aligned, `size` bytes) as an empty ring and attach
 * `r` to it.  Only the owner calls this, before any peer attaches. */
fx_status fx_ring_init(fx_ring *r, void *mem, size_t size, uint32_t capacity);

/* Attach to a ring formatted by fx_ring_init, validating every header field
 * against `size`.  A foreign or corrupt buffer gives FX_CORRUPT. */
fx_status fx_ring_attach(fx_ring *r, void *mem, size_t size);

/* Pause iterations a wait spends before sleeping (clamped to MAX_SPIN). */
void fx_ring_set_spin(fx_ring *r, uint32_t spin);

/* Return the ring to empty and bump its generation.  Only when no peer
 * handle is in use (e.g. after the peer process died); every other handle
 * then reports FX_STALE and must attach again. */
fx_status fx_ring_reset(fx_ring *r);

/* ---- producer ---------------------------------------------------------- */

/* Copy one record in and publish it.  FX_FULL if it does not fit now. */
fx_status fx_ring_try_push(fx_ring *r, const void *data, uint32_t len);

/* As try_push, waiting up to timeout_ns for space (< 0: no limit). */
fx_status fx_ring_push_wait(fx_ring *r, const void *data, uint32_t len,
                            int64_t timeout_ns);

/* Zero-copy write: reserve `len` bytes for one record and get its payload
 * pointer; the record becomes visible at the next fx_ring_publish.  Several
 * records can be staged and published together (one store, one wake). */
fx_status fx_ring_reserve(fx_ring *r, uint32_t len, void **payload);
void fx_ring_publish(fx_ring *r);

/* Drop records staged since the last publish (they were never visible). */
void fx_ring_unstage(fx_ring *r);

/* Wait until a record of `len` payload bytes fits (< 0: no limit). */
fx_status fx_ring_wait_writable(fx_ring *r, uint32_t len, int64_t timeout_ns);

/* ---- consumer ---------------------------------------------------------- */

/* Zero-copy read of the next record.  The pointer stays valid until the
 * record is released by fx_ring_consume or fx_ring_release. */
fx_status fx_ring_peek(fx_ring *r, const void **payload, uint32_t *len);

/* Step past the record last peeked without handing its space back yet
 * (batch reads); fx_ring_release then hands back everything stepped over. */
fx_status fx_ring_advance(fx_ring *r);
void fx_ring_release(fx_ring *r);

/* Forget records stepped over but not released: they will be read again. */
void fx_ring_unread(fx_ring *r);

/* advance + release: the record's space goes back to the producer. */
fx_status fx_ring_consume(fx_ring *r);

/* Copy the next record into `out` (capacity `cap`) and consume it.  If it
 * does not fit, FX_TOO_BIG with *len set and the record left in place. */
fx_status fx_ring_try_pop(fx_ring *r, void *out, uint32_t cap, uint32_t *len);

/* Wait until at least one record is readable (< 0: no limit). */
fx_status fx_ring_wait_readable(fx_ring *r, int64_t timeout_ns);

/* ---- observation (either side, any time) -------------------------------- */

void fx_ring_stats_get(const fx_ring *r, fx_ring_stats *out);
uint64_t fx_ring_used_bytes(const fx_ring *r);
uint64_t fx_ring_free_bytes(const fx_ring *r);

#ifdef __cplusplus
}
#endif

#endif /* FASTEXT_RING_H */
