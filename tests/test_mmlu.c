/* test_mmlu.c -- the MMLU CSV parser, directory loader and standard prompt.
 *
 * Parser and prompt tests run on CSV text written here. The tests against the
 * real release read ../shared/data/mmlu in place (never copied) and skip when it
 * is absent. Their expected numbers were derived independently with Python's
 * csv module and a transcription of the original evaluation code's
 * format_subject()/format_example() (see the comments at each constant). */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mmlu.h"

/* ------------------------------------------------------------------------- */
/* helpers                                                                   */
/* ------------------------------------------------------------------------- */

static int parse(const char *csv, km_mmlu_item **items, int *n, km_error *err) {
    memset(err, 0, sizeof *err);
    return km_mmlu_parse_csv(csv, strlen(csv), "t.csv", items, n, err);
}

static void assert_item(const km_mmlu_item *it, const char *q, const char *a, const char *b, const char *c,
                        const char *d, char ans) {
    assert_string_equal(it->question, q);
    assert_string_equal(it->choice[0], a);
    assert_string_equal(it->choice[1], b);
    assert_string_equal(it->choice[2], c);
    assert_string_equal(it->choice[3], d);
    assert_int_equal(it->answer, ans);
}

/* Parsing must fail, the outputs must be empty, and the message must contain
 * every given fragment (the file name and the line, usually). */
static void expect_fail(const char *csv, size_t len, const char *frag1, const char *frag2) {
    km_mmlu_item *items = (km_mmlu_item *)1;
    int n = -1;
    km_error err = {{0}};
    int rc = km_mmlu_parse_csv(csv, len, "bad.csv", &items, &n, &err);
    if (rc == 0) km_mmlu_items_free(items, n);
    assert_int_equal(rc, -1);
    assert_null(items);
    assert_int_equal(n, 0);
    if (!strstr(err.msg, frag1) || (frag2 && !strstr(err.msg, frag2)))
        fail_msg("error \"%s\" lacks \"%s\" / \"%s\"", err.msg, frag1, frag2 ? frag2 : "");
}

static void expect_fail_str(const char *csv, const char *frag1, const char *frag2) {
    expect_fail(csv, strlen(csv), frag1, frag2);
}

static char *join_segments(char **segs, int n) {
    size_t total = 1;
    for (int i = 0; i < n; i++) total += strlen(segs[i]);
    char *s = malloc(total);
    assert_non_null(s);
    s[0] = 0;
    for (int i = 0; i < n; i++) strcat(s, segs[i]);
    return s;
}

static void free_segments(char **segs, int n) {
    for (int i = 0; i < n; i++) free(segs[i]);
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

static void write_text(const char *dir, const char *rel, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

/* ------------------------------------------------------------------------- */
/* parser: accepted input                                                    */
/* ------------------------------------------------------------------------- */

static void test_parse_basic_lf(void **state) {
    km_mmlu_item *it;
    int n;
    km_error err;
    assert_int_equal(parse("What is 1+1?,1,2,3,4,B\nWhat is 2+2?,4,3,2,1,A\n", &it, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_item(&it[0], "What is 1+1?", "1", "2", "3", "4", 'B');
    assert_item(&it[1], "What is 2+2?", "4", "3", "2", "1", 'A');
    km_mmlu_items_free(it, n);
}

static void test_parse_crlf_and_mixed(void **state) {
    km_mmlu_item *it;
    int n;
    km_error err;
    assert_int_equal(parse("q1,a,b,c,d,C\r\nq2,e,f,g,h,D\nq3,i,j,k,l,A\r\n", &it, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_item(&it[0], "q1", "a", "b", "c", "d", 'C');
    assert_item(&it[1], "q2", "e", "f", "g", "h", 'D');
    assert_item(&it[2], "q3", "i", "j", "k", "l", 'A');
    km_mmlu_items_free(it, n);
}

static void test_parse_no_final_newline(void **state) {
    const char *inputs[] = {"q1,a,b,c,d,A\nq2,a,b,c,d,D", "q1,a,b,c,d,A\r\nq2,a,b,c,d,D",
                            "q1,a,b,c,d,A\n\"q2\",a,b,c,d,\"D\""};
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        km_mmlu_item *it;
        int n;
        km_error err;
        assert_int_equal(parse(inputs[i], &it, &n, &err), 0);
        assert_int_equal(n, 2);
        assert_item(&it[1], "q2", "a", "b", "c", "d", 'D');
        km_mmlu_items_free(it, n);
    }
}

static void test_parse_quoted_fields(void **state) {
    km_mmlu_item *it;
    int n;
    km_error err;
    const char *csv =
        "\"Commas, inside\",\"He said \"\"hi\"\"\",\"line1\nline2\",\"\",\"crlf\r\nkept\",B\n"
        "\"\"\"\",\"a,\"\"b\"\",c\",plain,\"x\n\ny\",\"end\",\"C\"\n";
    assert_int_equal(parse(csv, &it, &n, &err), 0);
    assert_int_equal(n, 2);
    /* Bytes inside quotes are verbatim: a CRLF there stays CRLF. */
    assert_item(&it[0], "Commas, inside", "He said \"hi\"", "line1\nline2", "", "crlf\r\nkept", 'B');
    assert_item(&it[1], "\"", "a,\"b\",c", "plain", "x\n\ny", "end", 'C');
    km_mmlu_items_free(it, n);
}

static void test_parse_empty_fields_and_spaces(void **state) {
    km_mmlu_item *it;
    int n;
    km_error err;
    /* Text fields may be empty, and their spaces are data, not padding. */
    assert_int_equal(parse(" q ,, b ,,d,A\n", &it, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_item(&it[0], " q ", "", " b ", "", "d", 'A');
    km_mmlu_items_free(it, n);
}

static void test_parse_empty_input(void **state) {
    km_mmlu_item *it = (km_mmlu_item *)1;
    int n = -1;
    km_error err;
    assert_int_equal(km_mmlu_parse_csv("", 0, "e.csv", &it, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_null(it);
    km_mmlu_items_free(it, n); /* NULL is fine */
    /* A byte order mark alone is still an empty file. */
    assert_int_equal(parse("\xEF\xBB\xBF", &it, &n, &err), 0);
    assert_int_equal(n, 0);
}

static void test_parse_bom_skipped(void **state) {
    km_mmlu_item *it;
    int n;
    km_error err;
    assert_int_equal(parse("\xEF\xBB\xBFq,a,b,c,d,A\n", &it, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(it[0].question, "q");
    km_mmlu_items_free(it, n);
}

static void test_parse_many_rows(void **state) {
    /* Enough rows to exercise the array growth several times. */
    enum { ROWS = 1000 };
    char *csv = malloc(ROWS * 64);
    assert_non_null(csv);
    size_t off = 0;
    for (int i = 0; i < ROWS; i++)
        off += (size_t)sprintf(csv + off, "\"q%d\nx\",a%d,b,c,d,%c\r\n", i, i, "ABCD"[i % 4]);
    km_mmlu_item *it;
    int n;
    km_error err;
    assert_int_equal(km_mmlu_parse_csv(csv, off, "many.csv", &it, &n, &err), 0);
    assert_int_equal(n, ROWS);
    char want[32];
    for (int i = 0; i < ROWS; i++) {
        snprintf(want, sizeof want, "q%d\nx", i);
        assert_string_equal(it[i].question, want);
        snprintf(want, sizeof want, "a%d", i);
        assert_string_equal(it[i].choice[0], want);
        assert_int_equal(it[i].answer, "ABCD"[i % 4]);
    }
    km_mmlu_items_free(it, n);
    free(csv);
}

/* ------------------------------------------------------------------------- */
/* parser: rejected input                                                    */
/* ------------------------------------------------------------------------- */

static void test_reject_field_count(void **state) {
    expect_fail_str("q,a,b,c,d,A\nq,a,b,c,A\n", "bad.csv:2: record 2", "found 5");
    expect_fail_str("q,a,b,c,d,A\nq,a,b,c,d,A\nq,a,b,c,d,e,A\n", "bad.csv:3: record 3", "found 7");
    expect_fail_str("q,a,b,c,d,A,\n", "bad.csv:1: record 1", "found 7");
    expect_fail_str("just a line", "bad.csv:1:", "found 1");
    /* A blank line is a one-field record, not something to skip silently. */
    expect_fail_str("q,a,b,c,d,A\n\nq,a,b,c,d,A\n", "bad.csv:2: record 2", "empty line");
    expect_fail_str("q,a,b,c,d,A\n\n", "bad.csv:2: record 2", "empty line");
    expect_fail_str("q,a,b,c,d,A\r\n\r\n", "bad.csv:2: record 2", "empty line");
}

static void test_reject_answer(void **state) {
    expect_fail_str("q,a,b,c,d,E\n", "bad.csv:1: record 1", "answer must be one of A, B, C, D, found \"E\"");
    expect_fail_str("q,a,b,c,d,a\n", "bad.csv:1:", "found \"a\"");
    expect_fail_str("q,a,b,c,d, A\n", "bad.csv:1:", "found \" A\"");
    expect_fail_str("q,a,b,c,d,A \n", "bad.csv:1:", "found \"A \"");
    expect_fail_str("q,a,b,c,d,AB\n", "bad.csv:1:", "found \"AB\"");
    expect_fail_str("q,a,b,c,d,\n", "bad.csv:1:", "found \"\"");
    expect_fail_str("q,a,b,c,d,", "bad.csv:1:", "found \"\"");
    expect_fail_str("q,a,b,c,d,\"A\nB\"\n", "bad.csv:1:", "found \"A?B\"");
    /* A long bad answer is shortened in the message. */
    expect_fail_str("q,a,b,c,d,0123456789012345678901234567890123456789\n", "bad.csv:1:", "...\"");
}

static void test_reject_quotes(void **state) {
    /* The line named is the one where the open quote is. */
    expect_fail_str("q,a,b,c,d,A\nq,a,b,\"c\nd\ne,f\n", "bad.csv:2: record 2", "unterminated quoted field");
    expect_fail_str("\"", "bad.csv:1: record 1", "unterminated");
    expect_fail_str("q,a,b,c,d,\"A\"\"\n", "bad.csv:1:", "unterminated");
    expect_fail_str("q,\"a\"x,b,c,d,A\n", "bad.csv:1: record 1", "after closing quote");
    expect_fail_str("q,\"a\" ,b,c,d,A\n", "bad.csv:1:", "after closing quote");
    expect_fail_str("q,\"a\"\r,b,c,d,A\n", "bad.csv:1:", "after closing quote");
    expect_fail_str("q,a\"b,b,c,d,A\n", "bad.csv:1: record 1", "quote inside an unquoted field");
}

static void test_reject_bare_cr(void **state) {
    expect_fail_str("q,a,b,c,d,A\rq,a,b,c,d,A\r", "bad.csv:1:", "carriage return");
    expect_fail_str("q,a\rb,b,c,d,A\n", "bad.csv:1:", "carriage return");
}

static void test_reject_nul(void **state) {
    static const char csv[] = "q,a,b,c,d,A\nq,a,b\0,c,d,A\n";
    expect_fail(csv, sizeof csv - 1, "bad.csv:2:", "NUL byte at offset 17");
    static const char quoted[] = "\"q\0\",a,b,c,d,A\n";
    expect_fail(quoted, sizeof quoted - 1, "bad.csv:1:", "NUL");
}

static void test_line_numbers_across_multiline_fields(void **state) {
    /* Record 2 spans lines 2-4, so record 3 starts on line 5. */
    expect_fail_str("q,a,b,c,d,A\n\"q\nq\nq\",a,b,c,d,B\nq,a,b,c,d,X\n", "bad.csv:5: record 3", "found \"X\"");
    expect_fail_str("q,a,b,c,d,A\r\n\"q\r\nq\r\nq\",a,b,c,d,B\r\nq,a,b,c,d\r\n", "bad.csv:5: record 3", "found 5");
}

static void test_reject_too_large(void **state) {
    /* The parser checks the size before reading a byte; calloc'd memory is not
     * touched, so this costs no real memory. The limit is 64 MiB. */
    size_t len = ((size_t)64 << 20) + 1;
    char *big = calloc(1, len);
    assert_non_null(big);
    expect_fail(big, len, "bad.csv", "limit");
    free(big);
}

/* ------------------------------------------------------------------------- */
/* prompt                                                                    */
/* ------------------------------------------------------------------------- */

static km_mmlu_item toy_dev[2] = {
    {"What is 2+2?", {"3", "4", "5", "6"}, 'B'},
    {"Pick \"yes\",\nplease.", {"no", "yes", "maybe", "never"}, 'B'},
};
static km_mmlu_item toy_q = {"Which is prime?", {"4", "6", "7", "9"}, 'C'};
static const km_mmlu_subject toy = {"high_school_toy_math", toy_dev, 2, &toy_q, 1};

#define TOY_INTRO "The following are multiple choice questions (with answers) about high school toy math.\n\n"
#define TOY_EX1 "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B\n\n"
#define TOY_EX2 "Pick \"yes\",\nplease.\nA. no\nB. yes\nC. maybe\nD. never\nAnswer: B\n\n"
#define TOY_Q "Which is prime?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:"

static void test_prompt_exact(void **state) {
    char *segs[4];
    assert_int_equal(km_mmlu_prompt_segments(&toy, 2, &toy_q, segs), 4);
    assert_string_equal(segs[0], TOY_INTRO);
    assert_string_equal(segs[1], TOY_EX1);
    assert_string_equal(segs[2], TOY_EX2);
    assert_string_equal(segs[3], TOY_Q);
    char *all = join_segments(segs, 4);
    assert_string_equal(all, TOY_INTRO TOY_EX1 TOY_EX2 TOY_Q);
    free(all);
    free_segments(segs, 4);
}

static void test_prompt_k_capped_and_zero(void **state) {
    char *segs[4];
    /* k beyond n_dev is capped at n_dev. */
    assert_int_equal(km_mmlu_prompt_segments(&toy, 5, &toy_q, segs), 4);
    char *all = join_segments(segs, 4);
    assert_string_equal(all, TOY_INTRO TOY_EX1 TOY_EX2 TOY_Q);
    free(all);
    free_segments(segs, 4);

    assert_int_equal(km_mmlu_prompt_segments(&toy, 1, &toy_q, segs), 3);
    all = join_segments(segs, 3);
    assert_string_equal(all, TOY_INTRO TOY_EX1 TOY_Q);
    free(all);
    free_segments(segs, 3);

    assert_int_equal(km_mmlu_prompt_segments(&toy, 0, &toy_q, segs), 2);
    assert_string_equal(segs[0], TOY_INTRO);
    assert_string_equal(segs[1], TOY_Q);
    free_segments(segs, 2);
}

static void test_prompt_from_parsed_csv(void **state) {
    /* The whole path: CSV text -> items -> prompt. */
    km_mmlu_item *dev, *test;
    int n_dev, n_test;
    km_error err;
    assert_int_equal(parse("What is 2+2?,3,4,5,6,B\r\n\"Pick \"\"yes\"\",\nplease.\",no,yes,maybe,never,B\r\n", &dev,
                           &n_dev, &err),
                     0);
    assert_int_equal(parse("Which is prime?,4,6,7,9,C", &test, &n_test, &err), 0);
    km_mmlu_subject s = {"high_school_toy_math", dev, n_dev, test, n_test};
    char *segs[4];
    assert_int_equal(km_mmlu_prompt_segments(&s, 5, &test[0], segs), 4);
    char *all = join_segments(segs, 4);
    assert_string_equal(all, TOY_INTRO TOY_EX1 TOY_EX2 TOY_Q);
    free(all);
    free_segments(segs, 4);
    km_mmlu_items_free(dev, n_dev);
    km_mmlu_items_free(test, n_test);
}

/* ------------------------------------------------------------------------- */
/* loader on a hand-made tree                                                */
/* ------------------------------------------------------------------------- */

static void test_load_small_tree(void **state) {
    char *root = tu_tmpdir();
    assert_non_null(root);
    km_error err = {{0}};
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/dev", root);
    assert_int_equal(km_mkdir_p(dir, &err), 0);
    snprintf(dir, sizeof dir, "%s/test", root);
    assert_int_equal(km_mkdir_p(dir, &err), 0);

    write_text(root, "dev/zoology_dev.csv", "z1,a,b,c,d,A\nz2,a,b,c,d,B\n");
    write_text(root, "test/zoology_test.csv", "zq,a,b,c,d,D\n");
    write_text(root, "dev/algebra_dev.csv", "a1,a,b,c,d,C\n");
    write_text(root, "test/algebra_test.csv", "aq1,a,b,c,d,A\r\naq2,a,b,c,d,B\r\n");
    write_text(root, "dev/held_out_dev.csv", "h,a,b,c,d,A\n");    /* no test file: skipped */
    write_text(root, "test/no_dev_test.csv", "n,a,b,c,d,A\n");    /* no dev file: skipped */
    write_text(root, "test/README", "not a csv\n");               /* noise */
    write_text(root, "test/algebra_test.csv.orig", "junk\n");     /* noise */
    write_text(root, "test/_test.csv", "q,a,b,c,d,A\n");          /* empty subject name */
    write_text(root, "dev/empty_dev.csv", "");                    /* empty files are fine */
    write_text(root, "test/empty_test.csv", "");

    km_mmlu *m = km_mmlu_load(root, &err);
    if (!m) fail_msg("load: %s", err.msg);
    assert_int_equal(m->n_subjects, 3);
    assert_string_equal(m->subjects[0].name, "algebra");
    assert_string_equal(m->subjects[1].name, "empty");
    assert_string_equal(m->subjects[2].name, "zoology");
    assert_int_equal(m->subjects[0].n_dev, 1);
    assert_int_equal(m->subjects[0].n_test, 2);
    assert_string_equal(m->subjects[0].test[1].question, "aq2");
    assert_int_equal(m->subjects[1].n_dev, 0);
    assert_int_equal(m->subjects[1].n_test, 0);
    assert_int_equal(m->subjects[2].n_dev, 2);
    assert_int_equal(m->subjects[2].test[0].answer, 'D');
    km_mmlu_free(m);

    /* A malformed row anywhere fails the load, naming the file and line. */
    write_text(root, "test/zoology_test.csv", "zq,a,b,c,d,D\nzq2,a,b,c,d,Q\n");
    memset(&err, 0, sizeof err);
    assert_null(km_mmlu_load(root, &err));
    if (!strstr(err.msg, "test/zoology_test.csv:2: record 2")) fail_msg("unexpected error: %s", err.msg);

    tu_rmtree(root);
    free(root);
}

static void test_load_errors(void **state) {
    char *root = tu_tmpdir();
    assert_non_null(root);
    km_error err = {{0}};
    /* No dev/ and test/ at all. */
    assert_null(km_mmlu_load(root, &err));
    assert_non_null(strstr(err.msg, "/dev"));

    /* Directories present but no subject has both files. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/dev", root);
    assert_int_equal(km_mkdir_p(dir, &err), 0);
    snprintf(dir, sizeof dir, "%s/test", root);
    assert_int_equal(km_mkdir_p(dir, &err), 0);
    write_text(root, "dev/a_dev.csv", "q,a,b,c,d,A\n");
    write_text(root, "test/b_test.csv", "q,a,b,c,d,A\n");
    memset(&err, 0, sizeof err);
    assert_null(km_mmlu_load(root, &err));
    assert_non_null(strstr(err.msg, "no subjects"));

    km_mmlu_free(NULL);
    tu_rmtree(root);
    free(root);
}

/* ------------------------------------------------------------------------- */
/* the real release, read in place                                           */
/* ------------------------------------------------------------------------- */

static char *mmlu_root(void) {
    const char *p = tu_shared("data/mmlu");
    if (!p) {
        print_message("SKIP: MMLU data not found (set KVMESH_SHARED_DIR or provide ../shared/data/mmlu)\n");
        return NULL;
    }
    return strdup(p); /* tu_shared returns a static buffer */
}

static const km_mmlu_subject *find_subject(const km_mmlu *m, const char *name) {
    for (int i = 0; i < m->n_subjects; i++)
        if (strcmp(m->subjects[i].name, name) == 0) return &m->subjects[i];
    fail_msg("subject %s not loaded", name);
    return NULL;
}

static void test_real_load(void **state) {
    char *root = mmlu_root();
    if (!root) skip();
    km_error err = {{0}};
    km_mmlu *m = km_mmlu_load(root, &err);
    if (!m) fail_msg("load %s: %s", root, err.msg);

    /* ASSETS.md: 47 of the 57 subjects have a test file, 11,052 test rows,
     * 5 dev rows per subject. */
    assert_int_equal(m->n_subjects, 47);
    long n_test = 0, n_dev = 0;
    for (int i = 0; i < m->n_subjects; i++) {
        const km_mmlu_subject *s = &m->subjects[i];
        if (i > 0) assert_true(strcmp(m->subjects[i - 1].name, s->name) < 0);
        assert_int_equal(s->n_dev, 5);
        assert_true(s->n_test > 0);
        n_test += s->n_test;
        n_dev += s->n_dev;
        for (int j = 0; j < s->n_dev; j++) assert_true(s->dev[j].answer >= 'A' && s->dev[j].answer <= 'D');
        for (int j = 0; j < s->n_test; j++) assert_true(s->test[j].answer >= 'A' && s->test[j].answer <= 'D');
    }
    assert_int_equal(n_test, 11052);
    assert_int_equal(n_dev, 47 * 5);
    assert_string_equal(m->subjects[0].name, "abstract_algebra");
    assert_string_equal(m->subjects[46].name, "us_foreign_policy");

    /* First row of test/abstract_algebra_test.csv (quoted question with commas):
     * "Find the degree ... sqrt(18)) over Q.",0,4,2,6,B */
    const km_mmlu_subject *aa = find_subject(m, "abstract_algebra");
    assert_item(&aa->test[0], "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.",
                "0", "4", "2", "6", 'B');
    /* Row 3: unquoted question, quoted choices holding commas. */
    assert_item(&aa->test[2],
                "Find all zeros in the indicated finite field of the given polynomial with coefficients in that "
                "field. x^5 + 3x^3 + x^2 + 2x in Z_5",
                "0", "1", "0,1", "0,4", 'D');

    /* test/logical_fallacies_test.csv, record 115: embedded blank line and
     * doubled quotes in every field. */
    const km_mmlu_subject *lf = find_subject(m, "logical_fallacies");
    assert_item(&lf->test[114],
                "Given the following major premise, which of the following minor premises could lead to a valid "
                "conclusion?\n\n\"Either I'm going to do well on this test or I'm going to be mad.\"",
                "\"I won't do well on the test\"", "\"I won't take the test\"", "\"My birthday is today\"",
                "both A and B", 'A');

    /* dev/college_mathematics_dev.csv, record 3: the one CRLF-inside-quotes
     * field in the release (the file itself uses LF line ends). */
    const km_mmlu_subject *cm = find_subject(m, "college_mathematics");
    assert_item(&cm->dev[2],
                "Let A be a real 2x2 matrix. Which of the following statements must be true?\r\n"
                "I. All of the entries of A^2 are nonnegative.\r\n"
                "II. The determinant of A^2 is nonnegative.\r\n"
                "III. If A has two distinct eigenvalues, then A^2 has two distinct eigenvalues.",
                "I only", "II only", "III only", "II and III only", 'B');

    /* Whole 5-shot prompts, compared with a Python transcription of the
     * original evaluation code (gen_prompt + format_example): byte length
     * and FNV-1a 64 of the UTF-8 text. */
    struct {
        const char *subject;
        int idx;
        size_t len;
        uint64_t fnv;
    } want[] = {
        {"abstract_algebra", 0, 993, 0xcd15aca4ef3ad62eULL},
        {"logical_fallacies", 114, 1910, 0xcc80355383371661ULL},
        {"college_mathematics", 0, 1807, 0x087cd037482a5360ULL},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const km_mmlu_subject *s = find_subject(m, want[i].subject);
        char *segs[7];
        assert_int_equal(km_mmlu_prompt_segments(s, 5, &s->test[want[i].idx], segs), 7);
        char *all = join_segments(segs, 7);
        assert_true(strncmp(all, "The following are multiple choice questions (with answers) about ", 65) == 0);
        assert_int_equal(strlen(all), want[i].len);
        assert_int_equal(fnv1a(all), want[i].fnv);
        free(all);
        free_segments(segs, 7);
    }
    /* Zero-shot: the intro spells the subject with '_' -> ' '. */
    char *segs0[2];
    assert_int_equal(km_mmlu_prompt_segments(aa, 0, &aa->test[0], segs0), 2);
    assert_string_equal(segs0[0],
                        "The following are multiple choice questions (with answers) about abstract algebra.\n\n");
    assert_string_equal(segs0[1], "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over "
                                  "Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:");
    free_segments(segs0, 2);

    km_mmlu_free(m);
    free(root);
}

/* Parse every .csv under dev/ and test/, whether or not its subject has the
 * other split, and count the rows. Python's csv module gives 285 dev rows
 * (57 files) and 11,052 test rows (47 files): 11,337 in all. */
static long count_dir(const char *root, const char *sub, int *n_files) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", root, sub);
    DIR *d = opendir(dir);
    assert_non_null(d);
    long rows = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 4, ".csv") != 0) continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        uint8_t *buf;
        size_t len;
        km_error err = {{0}};
        if (km_read_file(path, (size_t)64 << 20, &buf, &len, &err) != 0) fail_msg("%s", err.msg);
        km_mmlu_item *it;
        int n;
        if (km_mmlu_parse_csv((const char *)buf, len, path, &it, &n, &err) != 0) fail_msg("%s", err.msg);
        for (int i = 0; i < n; i++) assert_true(it[i].answer >= 'A' && it[i].answer <= 'D');
        rows += n;
        (*n_files)++;
        km_mmlu_items_free(it, n);
        free(buf);
    }
    closedir(d);
    return rows;
}

static void test_real_all_files(void **state) {
    char *root = mmlu_root();
    if (!root) skip();
    int dev_files = 0, test_files = 0;
    long dev_rows = count_dir(root, "dev", &dev_files);
    long test_rows = count_dir(root, "test", &test_files);
    assert_int_equal(dev_files, 57);
    assert_int_equal(test_files, 47);
    assert_int_equal(dev_rows, 285);
    assert_int_equal(test_rows, 11052);
    assert_int_equal(dev_rows + test_rows, 11337);
    free(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_basic_lf),
        cmocka_unit_test(test_parse_crlf_and_mixed),
        cmocka_unit_test(test_parse_no_final_newline),
        cmocka_unit_test(test_parse_quoted_fields),
        cmocka_unit_test(test_parse_empty_fields_and_spaces),
        cmocka_unit_test(test_parse_empty_input),
        cmocka_unit_test(test_parse_bom_skipped),
        cmocka_unit_test(test_parse_many_rows),
        cmocka_unit_test(test_reject_field_count),
        cmocka_unit_test(test_reject_answer),
        cmocka_unit_test(test_reject_quotes),
        cmocka_unit_test(test_reject_bare_cr),
        cmocka_unit_test(test_reject_nul),
        cmocka_unit_test(test_line_numbers_across_multiline_fields),
        cmocka_unit_test(test_reject_too_large),
        cmocka_unit_test(test_prompt_exact),
        cmocka_unit_test(test_prompt_k_capped_and_zero),
        cmocka_unit_test(test_prompt_from_parsed_csv),
        cmocka_unit_test(test_load_small_tree),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_real_load),
        cmocka_unit_test(test_real_all_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
