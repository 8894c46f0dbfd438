/* peerframe.h -- an authenticated byte stream: a body cut into frames, each
 * with a MAC chained to the one before, so a reader can use every frame's
 * bytes as soon as the frame is checked and still notice any change.
 *
 * Why: the answer to a request forwarded to a peer is streamed (server-sent
 * events, one per token), so a MAC over the whole body cannot precede the
 * first byte. The peer frames the body instead; the forwarding node relays
 * a frame's bytes to its client only once the frame verified, and refuses
 * the rest of a stream at the first bad frame.
 *
 * Wire format (integers little-endian):
 *   frame  = u32 len, payload (len bytes), mac (32 bytes)
 *   mac    = HMAC-SHA256(key, chain(32) u32(len) payload)
 *   chain  = the mac of the previous frame; 32 zero bytes for the first
 *   len    = 1..KM_PEERFRAME_MAX for data; 0 marks the end (no payload)
 * The stream is the data frames then exactly one end frame, and nothing
 * after it. The chain makes a dropped, repeated or reordered frame fail its
 * MAC; the end frame makes a truncated stream detectable (a transport that
 * ends before it is refused). The key is per answer (peerauth.h derives it
 * from the secret, the request, the status and the content type), so frames
 * of one answer are worthless in any other.
 *
 * Pure functions, no I/O, no clock. A writer or reader is used by one
 * thread at a time. Errors start with "peer frame: " and never echo bytes. */
#ifndef KVMESH_PEERFRAME_H
#define KVMESH_PEERFRAME_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define KM_PEERFRAME_KEY_LEN 32
#define KM_PEERFRAME_MAX 65536        /* payload bytes of one frame */
#define KM_PEERFRAME_OVERHEAD (4 + 32) /* bytes a frame adds to its payload */

typedef struct km_peerframe_writer km_peerframe_writer;
typedef struct km_peerframe_reader km_peerframe_reader;

/* A writer for one stream under key (copied). NULL on out of memory. */
km_peerframe_writer *km_peerframe_writer_new(const uint8_t key[KM_PEERFRAME_KEY_LEN]);
/* Wipes the key (NULL: no-op). */
void km_peerframe_writer_free(km_peerframe_writer *w);
/* Frame len bytes (1..KM_PEERFRAME_MAX) into out, which holds at least
 * len + KM_PEERFRAME_OVERHEAD; data may already sit at out + 4 (framing in
 * place). Returns the bytes written, 0 if len is out of range or the end was
 * written already. */
size_t km_peerframe_write(km_peerframe_writer *w, const uint8_t *data, size_t len, uint8_t *out);
/* The end frame into out (KM_PEERFRAME_OVERHEAD bytes); returns that, or 0
 * if written already. */
size_t km_peerframe_write_end(km_peerframe_writer *w, uint8_t *out);
/* A whole body as frames and the end frame (*out malloc'd). -1 on out of memory. */
int km_peerframe_seal(const uint8_t key[KM_PEERFRAME_KEY_LEN], const uint8_t *data, size_t len, uint8_t **out,
                      size_t *out_len);

enum {
    KM_PEERFRAME_MORE = 0, /* every input byte taken, no whole frame yet */
    KM_PEERFRAME_DATA = 1, /* a verified frame: its payload is out */
    KM_PEERFRAME_END = 2,  /* the verified end frame: the stream is complete */
};

/* A reader for one stream under key (copied). NULL on out of memory. */
km_peerframe_reader *km_peerframe_reader_new(const uint8_t key[KM_PEERFRAME_KEY_LEN]);
/* Wipes the key (NULL: no-op). */
void km_peerframe_reader_free(km_peerframe_reader *r);
/* Take the next bytes of the stream, as they arrive (any split). Consumes
 * input up to the end of the next whole frame (*used: how many bytes) and
 * returns KM_PEERFRAME_DATA with *payload, *payload_len (valid until the
 * next call), KM_PEERFRAME_END, or KM_PEERFRAME_MORE once all of in is taken.
 * -1 (err says why) on a bad length, a bad MAC or bytes after the end; a
 * reader that failed refuses everything after. */
int km_peerframe_read(km_peerframe_reader *r, const uint8_t *in, size_t len, size_t *used, const uint8_t **payload,
                      size_t *payload_len, km_error *err);
/* The transport ended: 0 if the end frame was read, else -1 ("truncated"). */
int km_peerframe_reader_finish(const km_peerframe_reader *r, km_error *err);

#endif
