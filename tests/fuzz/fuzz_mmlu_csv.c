/* fuzz_mmlu_csv.c -- libFuzzer target for km_mmlu_parse_csv.
 *
 * Build and run (from the project root):
 *   clang -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -g -O1 \
 *         -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I src \
 *         tests/fuzz/fuzz_mmlu_csv.c src/mmlu.c src/util.c -o /tmp/fuzz_mmlu_csv
 *   mkdir -p /tmp/mmlu-corpus
 *   /tmp/fuzz_mmlu_csv -max_total_time=60 /tmp/mmlu-corpus ../shared/data/mmlu/dev
 * (the second directory only seeds the corpus and is never written to).
 *
 * Besides "no crash, no leak, no UB", every input that parses is checked for:
 *   - well-formed items (non-NULL strings, answer in A-D) and a clean error
 *     message on failure;
 *   - a round trip: writing the items back as CSV (every field quoted, quotes
 *     doubled, alternating LF and CRLF) and parsing again gives the same items;
 *   - the prompt builder accepting the items as dev examples and question. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mmlu.h"

static size_t quoted_len(const char *s) {
    size_t n = 2;
    for (; *s; s++) n += (*s == '"') ? 2 : 1;
    return n;
}

static char *put_quoted(char *o, const char *s) {
    *o++ = '"';
    for (; *s; s++) {
        if (*s == '"') *o++ = '"';
        *o++ = *s;
    }
    *o++ = '"';
    return o;
}

/* Serialise items in the most defensive way a writer could; the parser must
 * read back exactly what it produced. */
static char *write_csv(const km_mmlu_item *it, int n, size_t *len) {
    size_t total = 1;
    for (int i = 0; i < n; i++) {
        total += quoted_len(it[i].question) + 5 /* commas */ + 3 /* "X" */ + 2 /* CRLF */;
        for (int j = 0; j < 4; j++) total += quoted_len(it[i].choice[j]);
    }
    char *buf = malloc(total);
    if (!buf) abort();
    char *o = buf;
    for (int i = 0; i < n; i++) {
        o = put_quoted(o, it[i].question);
        for (int j = 0; j < 4; j++) {
            *o++ = ',';
            o = put_quoted(o, it[i].choice[j]);
        }
        *o++ = ',';
        /* Quote the answer on odd rows so both forms are exercised. */
        if (i & 1) *o++ = '"';
        *o++ = it[i].answer;
        if (i & 1) *o++ = '"';
        if (i & 1) *o++ = '\r';
        *o++ = '\n';
    }
    *len = (size_t)(o - buf);
    return buf;
}

static void check_items(const km_mmlu_item *it, int n) {
    if (n < 0 || (n > 0 && !it)) abort();
    for (int i = 0; i < n; i++) {
        if (!it[i].question) abort();
        for (int j = 0; j < 4; j++)
            if (!it[i].choice[j]) abort();
        if (it[i].answer < 'A' || it[i].answer > 'D') abort();
    }
}

static void check_round_trip(const km_mmlu_item *it, int n) {
    size_t len;
    char *csv = write_csv(it, n, &len);
    km_mmlu_item *again;
    int n2;
    km_error err;
    if (km_mmlu_parse_csv(csv, len, "roundtrip", &again, &n2, &err) != 0) {
        fprintf(stderr, "round trip failed to parse: %s\n", err.msg);
        abort();
    }
    if (n2 != n) abort();
    for (int i = 0; i < n; i++) {
        if (strcmp(it[i].question, again[i].question) != 0) abort();
        for (int j = 0; j < 4; j++)
            if (strcmp(it[i].choice[j], again[i].choice[j]) != 0) abort();
        if (it[i].answer != again[i].answer) abort();
    }
    km_mmlu_items_free(again, n2);
    free(csv);
}

static void check_prompt(km_mmlu_item *it, int n) {
    if (n == 0) return;
    km_mmlu_subject s = {"fuzz_subject", it, n, it, n};
    char *segs[7]; /* k is at most 5 */
    int k = n < 5 ? n : 5;
    int got = km_mmlu_prompt_segments(&s, 5, &it[n - 1], segs);
    if (got != k + 2) abort();
    const char *last = segs[got - 1];
    size_t l = strlen(last);
    if (l < 7 || strcmp(last + l - 7, "Answer:") != 0) abort();
    for (int i = 0; i < got; i++) free(segs[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    km_mmlu_item *items = NULL;
    int n = 0;
    km_error err;
    err.msg[0] = 0;
    if (km_mmlu_parse_csv((const char *)data, size, "fuzz.csv", &items, &n, &err) != 0) {
        /* A failure leaves nothing behind and always says why, naming the file. */
        if (items || n != 0 || strncmp(err.msg, "fuzz.csv", 8) != 0) abort();
        return 0;
    }
    check_items(items, n);
    check_round_trip(items, n);
    check_prompt(items, n);
    km_mmlu_items_free(items, n);
    return 0;
}
