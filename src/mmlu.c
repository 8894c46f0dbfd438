/* mmlu.c -- see mmlu.h.
 *
 * The CSV reader is a small hand-written RFC 4180 parser rather than a
 * general one: every record must have exactly six fields and the last one
 * must be a single letter A-D. Being strict here is deliberate. A benchmark
 * that silently drops or merges rows produces numbers that look fine and are
 * wrong, so anything unexpected is an error that names the file and the line
 * where the offending record starts.
 *
 * Accepted:
 *   - LF or CRLF record terminators, mixed freely; a missing final terminator.
 *   - Quoted fields holding commas, "" (an escaped quote), LF and CRLF. The
 *     bytes inside quotes are kept verbatim (a CRLF inside a quoted field stays
 *     CRLF: the original evaluation code keeps it too, and it is the data).
 *   - A leading UTF-8 byte order mark, which is skipped (spreadsheet exports
 *     add one; kept, it would silently become part of the first question).
 * Rejected:
 *   - A record with other than six fields (a blank line is a record with one).
 *   - An answer that is not exactly one of A, B, C, D (no whitespace, no
 *     lower case: the released files have none, so either would mean a
 *     damaged file).
 *   - An unterminated quoted field; anything but a separator or line end right
 *     after a closing quote; a quote inside an unquoted field; a bare CR
 *     outside quotes; any NUL byte; a file larger than MMLU_MAX_FILE. */
#include "mmlu.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The largest released file is about 1.3 MB; 64 MiB leaves ample room for
 * other benchmarks in the same format while refusing to slurp something that
 * is clearly not an MMLU file. It also keeps every count well inside an int. */
#define MMLU_MAX_FILE ((size_t)64 << 20)

#define MMLU_FIELDS 6 /* question, A, B, C, D, answer */

/* ------------------------------------------------------------------------- */
/* CSV parsing                                                               */
/* ------------------------------------------------------------------------- */

typedef enum { FIELD_COMMA, FIELD_EOL, FIELD_EOF } field_end;

typedef struct csv_parser {
    const char *p, *end;
    const char *name; /* file name for error messages */
    int line;         /* 1-based physical line of p */
    int rec_line;     /* line where the current record starts */
    int rec_no;       /* 1-based number of the current record */
} csv_parser;

/* Error with the position of the current record. Every parse error goes through
 * here so the messages have one shape: "file:line: record N: problem". */
static int csv_error(csv_parser *ps, km_error *err, int line, const char *what) {
    return km_error_set(err, "%s:%d: record %d: %s", ps->name, line, ps->rec_no, what);
}

/* After a field: consume the separator or line end and report which it was.
 * Returns -1 if the next byte is neither (the caller words the error). */
static int csv_field_end(csv_parser *ps, field_end *how) {
    if (ps->p == ps->end) {
        *how = FIELD_EOF;
    } else if (*ps->p == ',') {
        ps->p++;
        *how = FIELD_COMMA;
    } else if (*ps->p == '\n') {
        ps->p++;
        ps->line++;
        *how = FIELD_EOL;
    } else if (*ps->p == '\r' && ps->p + 1 < ps->end && ps->p[1] == '\n') {
        ps->p += 2;
        ps->line++;
        *how = FIELD_EOL;
    } else {
        return -1;
    }
    return 0;
}

/* Parse one field at ps->p into a fresh NUL-terminated string. */
static int csv_field(csv_parser *ps, char **out, field_end *how, km_error *err) {
    *out = NULL;
    if (ps->p < ps->end && *ps->p == '"') {
        int start_line = ps->line;
        const char *s = ps->p + 1;
        /* First find the closing quote: a '"' not followed by another '"'.
         * Knowing the span up front lets us allocate exactly once. */
        const char *q = s;
        size_t n_escaped = 0;
        for (;;) {
            q = memchr(q, '"', (size_t)(ps->end - q));
            if (!q) return csv_error(ps, err, start_line, "unterminated quoted field (no closing quote)");
            if (q + 1 < ps->end && q[1] == '"') {
                n_escaped++;
                q += 2;
                continue;
            }
            break;
        }
        size_t raw = (size_t)(q - s);
        char *f = malloc(raw - n_escaped + 1);
        if (!f) return km_error_set(err, "%s: out of memory", ps->name);
        size_t o = 0;
        for (const char *c = s; c < q; c++) {
            if (*c == '\n') ps->line++;
            f[o++] = *c;
            if (*c == '"') c++; /* skip the second quote of "" */
        }
        f[o] = 0;
        ps->p = q + 1;
        if (csv_field_end(ps, how) != 0) {
            free(f);
            return csv_error(ps, err, ps->line,
                             "unexpected character after closing quote (expected ',' or end of line)");
        }
        *out = f;
        return 0;
    }

    /* Unquoted: runs up to a comma, a line end or the end of the input. */
    const char *s = ps->p, *c = s;
    while (c < ps->end && *c != ',' && *c != '\n' && *c != '\r') {
        if (*c == '"')
            return csv_error(ps, err, ps->line,
                             "quote inside an unquoted field (a field containing quotes must be quoted as a whole)");
        c++;
    }
    ps->p = c;
    if (csv_field_end(ps, how) != 0) /* only a CR without LF can get here */
        return csv_error(ps, err, ps->line, "carriage return not followed by line feed");
    size_t n = (size_t)(c - s);
    char *f = malloc(n + 1);
    if (!f) return km_error_set(err, "%s: out of memory", ps->name);
    memcpy(f, s, n);
    f[n] = 0;
    *out = f;
    return 0;
}

void km_mmlu_items_free(km_mmlu_item *items, int n) {
    if (!items) return;
    for (int i = 0; i < n; i++) {
        free(items[i].question);
        for (int j = 0; j < 4; j++) free(items[i].choice[j]);
    }
    free(items);
}

/* Copy up to 24 bytes of s into buf for an error message, replacing control
 * bytes so a broken file cannot garble the terminal. */
static const char *printable(const char *s, char *buf, size_t cap) {
    size_t i = 0;
    for (; s[i] && i + 4 < cap && i < 24; i++) buf[i] = ((unsigned char)s[i] < 0x20) ? '?' : s[i];
    if (s[i]) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = 0;
    return buf;
}

int km_mmlu_parse_csv(const char *data, size_t len, const char *name_for_errors, km_mmlu_item **items, int *n_items,
                      km_error *err) {
    *items = NULL;
    *n_items = 0;
    const char *name = name_for_errors ? name_for_errors : "<csv>";
    if (len > MMLU_MAX_FILE)
        return km_error_set(err, "%s: %zu bytes, larger than the %zu-byte limit for an MMLU file", name, len,
                            MMLU_MAX_FILE);
    if (len == 0) return 0;

    /* A NUL is never valid text, and rejecting it up front means nothing below
     * has to worry about strings that end early. */
    const char *nul = memchr(data, 0, len);
    if (nul) {
        int line = 1;
        for (const char *c = data; c < nul; c++) line += (*c == '\n');
        return km_error_set(err, "%s:%d: NUL byte at offset %zu", name, line, (size_t)(nul - data));
    }

    csv_parser ps = {.p = data, .end = data + len, .name = name, .line = 1};
    if (len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0) ps.p += 3;

    km_mmlu_item *arr = NULL;
    int n = 0, cap = 0;
    char *f[MMLU_FIELDS] = {0};
    int nf = 0;

    while (ps.p < ps.end) {
        ps.rec_line = ps.line;
        ps.rec_no++;
        nf = 0;
        field_end how;
        do {
            char *field;
            if (csv_field(&ps, &field, &how, err) != 0) goto fail;
            /* Extra fields are counted (for the message) but not kept. */
            if (nf < MMLU_FIELDS)
                f[nf] = field;
            else
                free(field);
            nf++;
        } while (how == FIELD_COMMA);

        if (nf != MMLU_FIELDS) {
            char what[128];
            if (nf == 1 && f[0][0] == 0)
                snprintf(what, sizeof what, "empty line (expected %d fields: question,A,B,C,D,answer)", MMLU_FIELDS);
            else
                snprintf(what, sizeof what, "expected %d fields (question,A,B,C,D,answer), found %d", MMLU_FIELDS,
                         nf);
            csv_error(&ps, err, ps.rec_line, what);
            goto fail;
        }
        const char *ans = f[5];
        if (!(ans[0] >= 'A' && ans[0] <= 'D' && ans[1] == 0)) {
            char shown[32], what[96];
            snprintf(what, sizeof what, "answer must be one of A, B, C, D, found \"%s\"",
                     printable(ans, shown, sizeof shown));
            csv_error(&ps, err, ps.rec_line, what);
            goto fail;
        }
        if (n == cap) {
            /* Cannot overflow: the size limit bounds the record count far
             * below INT_MAX / 2 (a record takes at least 12 bytes). */
            int ncap = cap ? cap * 2 : 64;
            km_mmlu_item *na = realloc(arr, (size_t)ncap * sizeof *na);
            if (!na) {
                km_error_set(err, "%s: out of memory", name);
                goto fail;
            }
            arr = na;
            cap = ncap;
        }
        km_mmlu_item *it = &arr[n++];
        it->question = f[0];
        for (int j = 0; j < 4; j++) it->choice[j] = f[j + 1];
        it->answer = ans[0];
        free(f[5]);
        memset(f, 0, sizeof f);
    }
    *items = arr;
    *n_items = n;
    return 0;

fail:
    for (int j = 0; j < MMLU_FIELDS; j++) free(f[j]);
    km_mmlu_items_free(arr, n);
    return -1;
}

/* ------------------------------------------------------------------------- */
/* Loading a directory tree                                                  */
/* ------------------------------------------------------------------------- */

static char *path_join(const char *a, const char *b, const char *c) {
    size_t n = strlen(a) + strlen(b) + strlen(c) + 3;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s%s", a, b, c);
    return p;
}

static int load_file(const char *path, km_mmlu_item **items, int *n, km_error *err) {
    uint8_t *buf;
    size_t len;
    if (km_read_file(path, MMLU_MAX_FILE, &buf, &len, err) != 0) {
        *items = NULL;
        *n = 0;
        return -1;
    }
    int rc = km_mmlu_parse_csv((const char *)buf, len, path, items, n, err);
    free(buf);
    return rc;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void km_mmlu_free(km_mmlu *m) {
    if (!m) return;
    for (int i = 0; i < m->n_subjects; i++) {
        km_mmlu_subject *s = &m->subjects[i];
        free(s->name);
        km_mmlu_items_free(s->dev, s->n_dev);
        km_mmlu_items_free(s->test, s->n_test);
    }
    free(m->subjects);
    free(m);
}

static void free_names(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* Subjects are whatever test/<s>_test.csv files exist that have a matching
 * dev/<s>_dev.csv. The test directory drives discovery because a subject
 * without test questions has nothing to evaluate, while the public release
 * has dev files for subjects whose test split is held back. */
km_mmlu *km_mmlu_load(const char *root, km_error *err) {
    static const char TEST_SUFFIX[] = "_test.csv";
    const size_t suffix_len = sizeof TEST_SUFFIX - 1;
    char *test_dir = path_join(root, "test", "");
    char *dev_dir = path_join(root, "dev", "");
    char **names = NULL;
    int n_names = 0, cap = 0;
    km_mmlu *m = NULL;
    DIR *d = NULL;

    if (!test_dir || !dev_dir) {
        km_error_set(err, "%s: out of memory", root);
        goto fail;
    }
    struct stat st;
    if (stat(dev_dir, &st) != 0) {
        km_error_set(err, "%s: %s", dev_dir, strerror(errno));
        goto fail;
    }
    if (!S_ISDIR(st.st_mode)) {
        km_error_set(err, "%s: not a directory", dev_dir);
        goto fail;
    }
    d = opendir(test_dir);
    if (!d) {
        km_error_set(err, "%s: %s", test_dir, strerror(errno));
        goto fail;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *fn = de->d_name;
        size_t fl = strlen(fn);
        if (fn[0] == '.' || fl <= suffix_len || strcmp(fn + fl - suffix_len, TEST_SUFFIX) != 0) continue;
        char *subject = strndup(fn, fl - suffix_len);
        char *dev_path = subject ? path_join(dev_dir, subject, "_dev.csv") : NULL;
        if (!dev_path) {
            free(subject);
            km_error_set(err, "%s: out of memory", root);
            goto fail;
        }
        int has_dev = stat(dev_path, &st) == 0 && S_ISREG(st.st_mode);
        free(dev_path);
        if (!has_dev) {
            free(subject);
            continue;
        }
        if (n_names == cap) {
            int ncap = cap ? cap * 2 : 64;
            char **nn = realloc(names, (size_t)ncap * sizeof *nn);
            if (!nn) {
                free(subject);
                km_error_set(err, "%s: out of memory", root);
                goto fail;
            }
            names = nn;
            cap = ncap;
        }
        names[n_names++] = subject;
    }
    closedir(d);
    d = NULL;
    if (n_names == 0) {
        km_error_set(err, "%s: no subjects found (need test/<subject>_test.csv with a matching dev/<subject>_dev.csv)",
                     root);
        goto fail;
    }
    /* readdir order is arbitrary; sorting makes runs and reports reproducible. */
    qsort(names, (size_t)n_names, sizeof *names, cmp_str);

    m = calloc(1, sizeof *m);
    if (m) m->subjects = calloc((size_t)n_names, sizeof *m->subjects);
    if (!m || !m->subjects) {
        km_error_set(err, "%s: out of memory", root);
        goto fail;
    }
    for (int i = 0; i < n_names; i++) {
        km_mmlu_subject *s = &m->subjects[i];
        s->name = names[i];
        names[i] = NULL; /* owned by m from here on */
        m->n_subjects = i + 1;
        char *dev_path = path_join(dev_dir, s->name, "_dev.csv");
        char *test_path = path_join(test_dir, s->name, "_test.csv");
        int rc = -1;
        if (!dev_path || !test_path)
            km_error_set(err, "%s: out of memory", root);
        else if (load_file(dev_path, &s->dev, &s->n_dev, err) == 0)
            rc = load_file(test_path, &s->test, &s->n_test, err);
        free(dev_path);
        free(test_path);
        if (rc != 0) goto fail;
    }
    free_names(names, n_names);
    free(test_dir);
    free(dev_dir);
    return m;

fail:
    if (d) closedir(d);
    free_names(names, n_names);
    km_mmlu_free(m);
    free(test_dir);
    free(dev_dir);
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* The standard prompt                                                       */
/* ------------------------------------------------------------------------- */

/* Concatenate n strings into one fresh allocation. */
static char *concat(const char *const *parts, int n) {
    size_t total = 1, off = 0;
    for (int i = 0; i < n; i++) total += strlen(parts[i]);
    char *s = malloc(total);
    if (!s) return NULL;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(parts[i]);
        memcpy(s + off, parts[i], l);
        off += l;
    }
    s[off] = 0;
    return s;
}

/* "question\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:" plus " X\n\n" for an example.
 * This is the original evaluation code's format_example(): note there is no
 * space after "Answer:" for the question being asked, so the model's first
 * token carries the leading space of the letter. */
static char *format_item(const km_mmlu_item *it, int with_answer) {
    char ans[5] = {' ', it->answer, '\n', '\n', 0};
    const char *parts[] = {it->question, "\nA. ",   it->choice[0], "\nB. ", it->choice[1],
                           "\nC. ",      it->choice[2], "\nD. ",   it->choice[3], "\nAnswer:",
                           with_answer ? ans : ""};
    return concat(parts, (int)(sizeof parts / sizeof parts[0]));
}

/* Returns k + 2, or -1 if out of memory (then no segment is left allocated and
 * every segs[i] written so far is reset to NULL). A negative k is taken as 0. */
int km_mmlu_prompt_segments(const km_mmlu_subject *s, int k, const km_mmlu_item *q, char **segs) {
    if (k > s->n_dev) k = s->n_dev;
    if (k < 0) k = 0;
    int n = 0;

    char *subject = strdup(s->name);
    if (!subject) return -1;
    for (char *c = subject; *c; c++)
        if (*c == '_') *c = ' ';
    const char *intro[] = {"The following are multiple choice questions (with answers) about ", subject, ".\n\n"};
    segs[n] = concat(intro, 3);
    free(subject);
    if (!segs[n]) goto oom;
    n++;
    for (int i = 0; i < k; i++) {
        segs[n] = format_item(&s->dev[i], 1);
        if (!segs[n]) goto oom;
        n++;
    }
    segs[n] = format_item(q, 0);
    if (!segs[n]) goto oom;
    return n + 1;

oom:
    for (int i = 0; i < n; i++) {
        free(segs[i]);
        segs[i] = NULL;
    }
    return -1;
}
