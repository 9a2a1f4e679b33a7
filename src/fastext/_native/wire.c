/*
 * fastext wire: see wire.h.
 *
 * Reading: a cursor [p, end) that only ever moves forward after a bounds check.
 * Every length is compared with the bytes that remain before it is used, so a
 * claimed length can never take the cursor past `end` (and the comparison is
 * done in uint64_t, so a huge claim cannot wrap).
 *
 * Why keys must be one byte: every key of the canonical sample is a field
 * number below 16, so its canonical key is one byte.  protobuf also accepts
 * overlong keys; those (and anything else unusual) go to protobuf.
 */
#include "wire.h"

#include <string.h>

/* Keys (field number << 3 | wire type) of the canonical sample. */
enum {
    KEY_VARINT_1 = 0x08, /* sequence_number, timestamp, address_offset  */
    KEY_VARINT_2 = 0x10, /* ack_sequence_number, length_bytes           */
    KEY_LEN_1 = 0x0a,    /* ContentBytes.bytes                          */
    KEY_LEN_5 = 0x2a,    /* MediaSample.content_bytes                   */
    KEY_LEN_6 = 0x32,    /* media_sample, MediaSample.content_reference */
};

const char *fx_wire_status_name(fx_wire_status st)
{
    switch (st) {
    case FX_WIRE_OK: return "FX_WIRE_OK";
    case FX_WIRE_OTHER: return "FX_WIRE_OTHER";
    case FX_WIRE_SPACE: return "FX_WIRE_SPACE";
    case FX_WIRE_TOO_BIG: return "FX_WIRE_TOO_BIG";
    case FX_WIRE_BAD_ARG: return "FX_WIRE_BAD_ARG";
    }
    return "FX_WIRE_UNKNOWN";
}

/* ---- reading ------------------------------------------------------------ */

typedef struct cursor {
    const uint8_t *p;
    const uint8_t *end;
} cursor;

/* A uint64 varint: at most 10 bytes, the 10th at most 1 (no bits past 64). */
static int read_varint(cursor *c, uint64_t *value)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < FX_WIRE_MAX_VARINT; i++) {
        if (c->p == c->end)
            return -1;
        uint8_t byte = *c->p++;
        if (i == FX_WIRE_MAX_VARINT - 1 && byte > 1)
            return -1;
        v |= (uint64_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            *value = v;
            return 0;
        }
    }
    return -1; /* unreachable: the 10th byte either ended or was refused */
}

/* A length-delimited body: [body->p, body->end) lies inside c, c moves past it. */
static int read_body(cursor *c, cursor *body)
{
    uint64_t n;
    if (read_varint(c, &n) < 0 || n > (uint64_t)(c->end - c->p))
        return -1;
    body->p = c->p;
    body->end = c->p + n;
    c->p = body->end;
    return 0;
}

/* ContentBytes { bytes bytes = 1; }: absent bytes are empty (at the body). */
static int parse_content_bytes(cursor c, const uint8_t *base, fx_sample *out)
{
    out->a = (uint64_t)(c.p - base);
    out->b = 0;
    while (c.p < c.end) {
        cursor frame;
        if (*c.p++ != KEY_LEN_1 || read_body(&c, &frame) < 0)
            return -1;
        out->a = (uint64_t)(frame.p - base); /* a repeated bytes field: the last wins */
        out->b = (uint64_t)(frame.end - frame.p);
    }
    return 0;
}

/* ContentReference { uint64 address_offset = 1; uint64 length_bytes = 2; } */
static int parse_content_reference(cursor c, fx_sample *out)
{
    out->a = out->b = 0;
    while (c.p < c.end) {
        uint8_t key = *c.p++;
        uint64_t *slot = key == KEY_VARINT_1 ? &out->a : key == KEY_VARINT_2 ? &out->b : NULL;
        if (slot == NULL || read_varint(&c, slot) < 0)
            return -1;
    }
    return 0;
}

/* MediaSample { timestamp = 1; content_bytes = 5 | content_reference = 6 }.
 * A second content (the same kind or the other) is left to protobuf. */
static int parse_media_sample(cursor c, const uint8_t *base, fx_sample *out)
{
    out->timestamp = 0;
    out->kind = FX_CONTENT_NONE;
    out->a = out->b = 0;
    while (c.p < c.end) {
        uint8_t key = *c.p++;
        cursor body;
        if (key == KEY_VARINT_1) {
            if (read_varint(&c, &out->timestamp) < 0)
                return -1;
            continue;
        }
        if ((key != KEY_LEN_5 && key != KEY_LEN_6) || out->kind != FX_CONTENT_NONE ||
            read_body(&c, &body) < 0)
            return -1;
        if (key == KEY_LEN_5) {
            out->kind = FX_CONTENT_BYTES;
            if (parse_content_bytes(body, base, out) < 0)
                return -1;
        } else {
            out->kind = FX_CONTENT_REFERENCE;
            if (parse_content_reference(body, out) < 0)
                return -1;
        }
    }
    return 0;
}

fx_wire_status fx_parse_sample(const uint8_t *buf, size_t len, fx_sample *out)
{
    if (out == NULL || (buf == NULL && len != 0))
        return FX_WIRE_BAD_ARG;
    if (len == 0 || len > FX_WIRE_MAX_MESSAGE) /* empty: no media_sample */
        return FX_WIRE_OTHER;
    cursor c = {buf, buf + len};
    int have_sample = 0;
    out->seq = out->ack = 0;
    while (c.p < c.end) {
        uint8_t key = *c.p++;
        cursor body;
        if (key == KEY_VARINT_1) {
            if (read_varint(&c, &out->seq) < 0)
                return FX_WIRE_OTHER;
        } else if (key == KEY_VARINT_2) {
            if (read_varint(&c, &out->ack) < 0)
                return FX_WIRE_OTHER;
        } else if (key == KEY_LEN_6 && !have_sample) {
            if (read_body(&c, &body) < 0 || parse_media_sample(body, buf, out) < 0)
                return FX_WIRE_OTHER;
            have_sample = 1;
        } else {
            return FX_WIRE_OTHER;
        }
    }
    return have_sample ? FX_WIRE_OK : FX_WIRE_OTHER;
}

/* ---- writing ------------------------------------------------------------ */

static size_t varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* A varint field with its one-byte key, omitted when zero (proto3). */
static size_t scalar_size(uint64_t v)
{
    return v ? 1 + varint_size(v) : 0;
}

static uint8_t *put_scalar(uint8_t *p, uint8_t key, uint64_t v)
{
    if (v == 0)
        return p;
    *p++ = key;
    return put_varint(p, v);
}

fx_wire_status fx_ack_size(uint64_t seq, uint64_t ack, uint64_t timestamp,
                           size_t inferences_len, size_t *size)
{
    if (size == NULL)
        return FX_WIRE_BAD_ARG;
    if (inferences_len > FX_WIRE_MAX_MESSAGE)
        return FX_WIRE_TOO_BIG;
    /* Bounded by 2^31 + 40: no overflow even with a 32-bit size_t. */
    size_t sample = scalar_size(timestamp) + inferences_len;
    size_t total = scalar_size(seq) + scalar_size(ack) + 1 + varint_size(sample) + sample;
    if (total > FX_WIRE_MAX_MESSAGE)
        return FX_WIRE_TOO_BIG;
    *size = total;
    return FX_WIRE_OK;
}

fx_wire_status fx_encode_ack(uint64_t seq, uint64_t ack, uint64_t timestamp,
                             const uint8_t *inferences, size_t inferences_len,
                             uint8_t *out, size_t cap, size_t *written)
{
    size_t total;
    if (out == NULL || written == NULL || (inferences == NULL && inferences_len != 0))
        return FX_WIRE_BAD_ARG;
    fx_wire_status st = fx_ack_size(seq, ack, timestamp, inferences_len, &total);
    if (st != FX_WIRE_OK)
        return st;
    if (cap < total)
        return FX_WIRE_SPACE;
    uint8_t *p = put_scalar(out, KEY_VARINT_1, seq);
    p = put_scalar(p, KEY_VARINT_2, ack);
    *p++ = KEY_LEN_6;
    p = put_varint(p, scalar_size(timestamp) + inferences_len);
    p = put_scalar(p, KEY_VARINT_1, timestamp);
    if (inferences_len)
        memcpy(p, inferences, inferences_len);
    *written = (size_t)(p - out) + inferences_len;
    return FX_WIRE_OK;
}
