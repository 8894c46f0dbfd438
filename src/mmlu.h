/* mmlu.h -- MMLU (Hendrycks et al.) CSV files and the standard few-shot prompt.
 *
 * Files: <root>/dev/<subject>_dev.csv (few-shot examples) and
 * <root>/test/<subject>_test.csv; no header, columns question,A,B,C,D,answer,
 * RFC 4180 quoting (fields may hold commas, quotes, newlines). No subject list
 * is assumed: subjects are discovered from the directory. */
#ifndef KVMESH_MMLU_H
#define KVMESH_MMLU_H

#include "util.h"

typedef struct km_mmlu_item {
    char *question;
    char *choice[4]; /* A..D */
    char answer;     /* 'A'..'D' */
} km_mmlu_item;

typedef struct km_mmlu_subject {
    char *name;          /* e.g. "high_school_physics" */
    km_mmlu_item *dev;   /* few-shot examples */
    int n_dev;
    km_mmlu_item *test;  /* questions */
    int n_test;
} km_mmlu_subject;

typedef struct km_mmlu {
    km_mmlu_subject *subjects; /* sorted by name; only subjects with a test file */
    int n_subjects;
} km_mmlu;

/* Load every subject under root that has both a dev and a test file. Malformed
 * rows are an error naming the file and line. */
km_mmlu *km_mmlu_load(const char *root, km_error *err);
void km_mmlu_free(km_mmlu *m);

/* Parse one CSV buffer into items (exposed for tests and fuzzing). */
int km_mmlu_parse_csv(const char *data, size_t len, const char *name_for_errors, km_mmlu_item **items, int *n_items,
                      km_error *err);
void km_mmlu_items_free(km_mmlu_item *items, int n);

/* The standard prompt, as segments (the paper's logical parts):
 *   seg[0] = instruction line ("The following are multiple choice questions
 *            (with answers) about <subject with _ -> space>.\n\n")
 *   seg[1..k] = each few-shot example, "question\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer: X\n\n"
 *   seg[k+1] = the test question, ending "Answer:"
 * k is capped at n_dev. Returns the number of segments written (k + 2), or -1 when out of memory; the
 * strings are malloc'd, free each. segs must hold k + 2 pointers. */
int km_mmlu_prompt_segments(const km_mmlu_subject *s, int k, const km_mmlu_item *q, char **segs);

#endif
