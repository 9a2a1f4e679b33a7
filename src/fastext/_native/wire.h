/*
 * fastext wire: the contract's two per-frame messages in protobuf wire format,
 * without protobuf.
 *
 * fx_parse_sample recognises exactly the canonical sample message a client
 * sends per frame and reports where its frame bytes lie (zero copy); anything
 * else is FX_WIRE_OTHER, and the caller parses it with protobuf, which gives
 * protobuf's exact semantics (and its errors) for every other input.
 * fx_encode_ack writes the server's ack around a worker's serialized
 * inferences, byte-equal to protobuf's SerializeToString.
 *
 * Pure C11; no Python.h.  Every function returns an fx_wire_status; nothing
 * here allocates, aborts or prints, and no byte outside [buf, buf + len) is
 * ever read.  Field numbers are docs' protocol.md's (see src/fastext/wire.py).
 */
#ifndef FASTEXT_WIRE_H
#define FASTEXT_WIRE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fx_wire_status {
    FX_WIRE_OK = 0,
    FX_WIRE_OTHER = 1,   /* not the canonical sample (not an error: parse it with protobuf) */
    FX_WIRE_SPACE = 2,   /* output buffer smaller than fx_ack_size()                        */
    FX_WIRE_TOO_BIG = 3, /* the message would exceed FX_WIRE_MAX_MESSAGE                    */
    FX_WIRE_BAD_ARG = 4, /* NULL where a pointer is needed                                  */
} fx_wire_status;

/* protobuf refuses messages of 2 GiB or more, so neither side goes there. */
#define FX_WIRE_MAX_MESSAGE ((size_t)INT32_MAX - 1)

/* Longest base-128 varint of a uint64. */
#define FX_WIRE_MAX_VARINT 10u

typedef enum fx_content_kind {
    FX_CONTENT_NONE = 0,      /* the sample has no content oneof set */
    FX_CONTENT_BYTES = 1,     /* content_bytes: a, b = offset, length of the frame in buf */
    FX_CONTENT_REFERENCE = 2, /* content_reference: a, b = address_offset, length_bytes */
} fx_content_kind;

typedef struct fx_sample {
    uint64_t seq;       /* MediaStreamMessage.sequence_number (0 if absent)     */
    uint64_t ack;       /* MediaStreamMessage.ack_sequence_number (0 if absent) */
    uint64_t timestamp; /* MediaSample.timestamp (0 if absent)                  */
    fx_content_kind kind;
    uint64_t a;
    uint64_t b;
} fx_sample;

/* Human-readable name of a status ("FX_WIRE_OTHER", ...). */
const char *fx_wire_status_name(fx_wire_status st);

/*
 * Parse `buf` if it is the canonical sample:
 *
 *   MediaStreamMessage { sequence_number = 1 (varint), ack_sequence_number = 2
 *     (varint), media_sample = 6 { timestamp = 1 (varint), one of content_bytes
 *     = 5 { bytes = 1 } or content_reference = 6 { address_offset = 1 (varint),
 *     length_bytes = 2 (varint) } } }
 *
 * Fields in any order; a repeated scalar field: the last one wins (as in
 * protobuf).  media_sample must appear exactly once; content_bytes and
 * content_reference at most once between them (a repeated or merged
 * submessage is FX_WIRE_OTHER).  Every key must be its one-byte canonical
 * form.  Anything else (a descriptor, inferences, unknown fields, other wire
 * types, varints longer than 10 bytes or whose 10th byte exceeds 1, lengths
 * past the end, truncation) is FX_WIRE_OTHER, with *out unspecified.
 */
fx_wire_status fx_parse_sample(const uint8_t *buf, size_t len, fx_sample *out);

/*
 * The ack: MediaStreamMessage { sequence_number = seq, ack_sequence_number =
 * ack, media_sample { timestamp, <inferences> } }, where `inferences` is a
 * serialized MediaSample holding only field 10 entries (or empty), appended
 * inside media_sample as is.  Zero scalars are omitted (proto3); media_sample
 * is always present, so an empty one is the two bytes 0x32 0x00.
 *
 * fx_ack_size: the exact size in *size (FX_WIRE_TOO_BIG past
 * FX_WIRE_MAX_MESSAGE).  fx_encode_ack writes it to out (cap bytes).
 */
fx_wire_status fx_ack_size(uint64_t seq, uint64_t ack, uint64_t timestamp,
                           size_t inferences_len, size_t *size);
fx_wire_status fx_encode_ack(uint64_t seq, uint64_t ack, uint64_t timestamp,
                             const uint8_t *inferences, size_t inferences_len,
                             uint8_t *out, size_t cap, size_t *written);

#ifdef __cplusplus
}
#endif

#endif /* FASTEXT_WIRE_H */
