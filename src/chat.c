/* chat.c -- see chat.h. */
#include "chat.h"

#include <llama.h>
#include <stdlib.h>
#include <string.h>

/* llama_chat_apply_template into a fresh buffer; NULL if the template is
 * unknown to llama.cpp. */
static char *render(const char *tmpl, const km_chat_msg *msgs, int n, bool add_ass, int *len) {
    struct llama_chat_message *lm = malloc((size_t)(n > 0 ? n : 1) * sizeof *lm);
    if (!lm) return NULL;
    size_t cap = 256;
    for (int i = 0; i < n; i++) {
        lm[i] = (struct llama_chat_message){msgs[i].role, msgs[i].content};
        cap += 2 * (strlen(msgs[i].role) + strlen(msgs[i].content)) + 64;
    }
    char *buf = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        char *grown = realloc(buf, cap);
        if (!grown || cap > INT32_MAX) break;
        buf = grown;
        int32_t r = llama_chat_apply_template(tmpl, lm, (size_t)n, add_ass, buf, (int32_t)cap);
        if (r < 0) break;
        if ((size_t)r < cap) {
            buf[r] = '\0';
            *len = r;
            free(lm);
            return buf;
        }
        cap = (size_t)r + 1;
    }
    free(buf);
    free(lm);
    return NULL;
}

const char *km_chat_template(km_model *m) {
    const char *own = llama_model_chat_template(km_model_llama(m), NULL);
    km_chat_msg probe = {"user", "x"};
    int len;
    char *r = own ? render(own, &probe, 1, true, &len) : NULL;
    if (r) {
        free(r);
        return own;
    }
    char arch[64] = "";
    llama_model_meta_val_str(km_model_llama(m), "general.architecture", arch, sizeof arch);
    return strncmp(arch, "gemma", 5) == 0 ? "gemma" : "chatml";
}

void km_chat_free_segments(char **segs, int n_segs) {
    if (!segs) return;
    for (int i = 0; i < n_segs; i++) free(segs[i]);
    free(segs);
}

int km_chat_segments(km_model *m, const km_chat_msg *msgs, int n, char ***segs, int *n_segs, km_error *err) {
    *segs = NULL;
    *n_segs = 0;
    if (n < 1) return km_error_set(err, "a chat needs at least one message");
    const char *tmpl = km_chat_template(m);
    int full_len;
    char *full = render(tmpl, msgs, n, true, &full_len);
    if (!full) return km_error_set(err, "chat template '%.40s' could not be applied", tmpl);
    char **out = malloc((size_t)(n + 1) * sizeof *out);
    if (!out) {
        free(full);
        return km_error_set(err, "out of memory");
    }
    int k = 0, cut = 0;
    /* the end of every message, the last one included (so that the next turn
     * of this conversation, which has more messages, shares the boundary) */
    for (int i = 1; i <= n; i++) {
        int len;
        char *part = render(tmpl, msgs, i, false, &len);
        if (part && len > cut && len < full_len && memcmp(part, full, (size_t)len) == 0) {
            out[k++] = strndup(full + cut, (size_t)(len - cut));
            cut = len;
        }
        free(part);
    }
    out[k++] = strndup(full + cut, (size_t)(full_len - cut));
    free(full);
    for (int i = 0; i < k; i++) {
        if (!out[i]) {
            km_chat_free_segments(out, k);
            return km_error_set(err, "out of memory");
        }
    }
    *segs = out;
    *n_segs = k;
    return 0;
}
