/* chat.h -- chat messages to a prompt in cacheable segments.
 *
 * A chat request is rendered with the model's chat template (llama.cpp's
 * built-in templates; a GGUF whose template llama.cpp cannot apply falls back
 * to the built-in one of its architecture's family, else ChatML). The prompt
 * is then cut where each message ends, so the system prompt, each few-shot
 * turn and the conversation so far are prefixes the cache can reuse: the next
 * turn of the same conversation finds everything before it stored.
 *
 * A cut is only made where the rendering of the first i messages is a prefix
 * of the whole rendering (true for the templates we know; a template that
 * rewrites earlier text just gives fewer cuts). */
#ifndef KVMESH_CHAT_H
#define KVMESH_CHAT_H

#include "engine.h"

typedef struct km_chat_msg {
    const char *role;    /* "system", "user", "assistant" */
    const char *content;
} km_chat_msg;

/* The template used for m: its own if llama.cpp can apply it, else a
 * built-in name. Static storage or owned by the model. */
const char *km_chat_template(km_model *m);

/* Render msgs (n >= 1) followed by the assistant's turn prefix into segments
 * (*segs: malloc'd array of malloc'd strings; free with km_chat_free_segments).
 * The text is template output: tokenize it with special tokens parsed. */
int km_chat_segments(km_model *m, const km_chat_msg *msgs, int n, char ***segs, int *n_segs, km_error *err);
void km_chat_free_segments(char **segs, int n_segs);

#endif
