// libFuzzer harness: a GGUF made of the fuzzer's bytes goes through llama.cpp's real loader
// (llama_model_load_from_file, the path every CLI tool takes) and, when it loads, one short batch
// is evaluated, so the I2_S / TL1 / TL2 / TQ2_0 mul_mat paths see whatever shapes, sizes, scale
// tails and tile records the file claims.
//
// Built by tests/fuzz/fuzz.py (clang, -fsanitize=fuzzer,address,undefined) against the same
// patched llama.cpp tree as the product build. A crash, a sanitizer report, an abort or an exit
// from inside llama.cpp is a finding; a file that is refused (the load returns NULL, context
// creation or llama_decode fails) is the expected outcome for bad input.

#include "llama.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

// llama.cpp logs every refusal; with BITNET_FUZZ_VERBOSE=1 they are shown (to read a finding).
static bool g_verbose = false;

static void quiet_log(enum ggml_log_level level, const char * text, void * /*user*/) {
    if (g_verbose || level == GGML_LOG_LEVEL_NONE) {
        fputs(text, stderr);
    }
}

extern "C" int LLVMFuzzerInitialize(int * /*argc*/, char *** /*argv*/) {
    const char * v = getenv("BITNET_FUZZ_VERBOSE");
    g_verbose = v != nullptr && v[0] != '\0' && v[0] != '0';
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    // The loader takes a path: give it an anonymous in-memory file (no disk I/O per input), which
    // it reads and memory-maps exactly like a model on disk.
    const int fd = memfd_create("fuzz.gguf", MFD_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    size_t done = 0;
    while (done < size) {
        const ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) {
            close(fd);
            return 0;
        }
        done += (size_t) n;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

    llama_model_params mparams = llama_model_default_params();
    mparams.load_mode = LLAMA_LOAD_MODE_MMAP;
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(path, mparams);
    if (model != nullptr) {
        // One short batch (the prompt path, several tokens) with a small context and one thread:
        // the same matmul kernels a real run uses, at fuzzing speed.
        llama_context_params cparams = llama_context_default_params();
        cparams.n_ctx = 16;
        cparams.n_batch = 4;
        cparams.n_ubatch = 4;
        cparams.n_seq_max = 1;
        cparams.n_threads = 1;
        cparams.n_threads_batch = 1;
        cparams.no_perf = true;
        llama_context * ctx = llama_init_from_model(model, cparams);
        if (ctx != nullptr) {
            const llama_vocab * vocab = llama_model_get_vocab(model);
            const int32_t n_vocab = llama_vocab_n_tokens(vocab);
            if (n_vocab > 0) {
                std::vector<llama_token> tokens = {0, 1 % n_vocab, 2 % n_vocab, (n_vocab - 1)};
                llama_batch batch = llama_batch_get_one(tokens.data(), (int32_t) tokens.size());
                if (llama_decode(ctx, batch) == 0) {
                    const float * logits = llama_get_logits_ith(ctx, -1);
                    volatile float sink = logits ? logits[0] : 0.0f;  // read the output
                    (void) sink;
                }
            }
            llama_free(ctx);
        }
        llama_model_free(model);
    }
    close(fd);
    return 0;
}
