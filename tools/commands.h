/* commands.h -- the kvmesh subcommands. Each takes the arguments after its own
 * name (argv[0] is the subcommand name, as getopt_long expects), prints its own
 * --help, and returns the process exit code (0 ok, 1 runtime error, 2 usage). */
#ifndef KVMESH_COMMANDS_H
#define KVMESH_COMMANDS_H

int cmd_run(int argc, char **argv);
int cmd_gen_model(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_link(int argc, char **argv); /* bench/bench_link.c, dispatched by cmd_bench */
int cmd_bench_mmlu(int argc, char **argv); /* bench/bench_mmlu.c */
int cmd_bench_fleet(int argc, char **argv); /* bench/bench_fleet.c */
int cmd_demo(int argc, char **argv);
int cmd_catalog(int argc, char **argv);
int cmd_node(int argc, char **argv);

/* Default location of the vocab GGUFs (llama.cpp's models/ggml-vocab-*.gguf):
 * $KVMESH_VOCAB_DIR, else the directory the build was configured with. */
const char *kvmesh_vocab_dir(void);

/* Numbers given as flag arguments, parsed strictly: the whole argument must
 * be a finite number (cli_int: a whole one within int; cli_uint: a whole one
 * >= 0). Where atoi/atof would silently read "abc" or "10x" as 0 or 10 (and 0
 * often means "no limit"), these remember the first bad argument and return
 * 0; after its option loop a command calls cli_bad_number(name), which
 * prints "<name>: 'abc' is not a number" and returns true if there was one. */
int cli_int(const char *s);
double cli_num(const char *s);
unsigned long long cli_uint(const char *s);
int cli_bad_number(const char *cmd);

#endif
