/* fuzz_blob.c -- libFuzzer target for the state blob parser and request check.
 * Built and run by tests/fuzz/run.sh. Every input must either be rejected with
 * a message or parse into fields that lie inside the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* Half of the inputs get a valid checksum, so the fuzzer explores the
     * fields behind it instead of stopping at the checksum every time. */
    uint8_t *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    if (size >= KM_BLOB_HEADER_SIZE && (size & 1)) km_blob_seal(copy, size);
    km_blob_info b;
    km_error err;
    err.msg[0] = 0;
    if (km_blob_parse(copy, size, 1 << 20, &b, &err) == 0) {
        if (b.payload < copy || b.payload + b.payload_len != copy + size) abort();
        if (km_blob_size(b.n_tokens, b.payload_len) != size) abort();
        int32_t req[64];
        for (int i = 0; i < 64; i++) req[i] = i;
        uint8_t fp[KM_FINGERPRINT_LEN] = {0};
        (void)km_blob_check_request(&b, fp, 1, 1, req, 64, &err);
        for (uint32_t i = 0; i < b.n_tokens; i++) (void)km_blob_token(&b, i);
    } else if (err.msg[0] == 0) {
        abort(); /* every rejection says why */
    }
    free(copy);
    return 0;
}
