// llama-bitnet-logits: run one prompt through a GGUF model and dump the logits, for end-to-end tests
// that compare the patched llama.cpp against bitnet's NumPy reference.
//
//   llama-bitnet-logits -m model.gguf (-p "text" | --ids 1,2,3) [--all] [-o logits.f32]
//                       [-t threads] [--ubatch n] [--kv-f16] [--fa] [--no-special] [--tokenize-only]
//                       [-v]
//
// stdout gets one JSON object: {"n_vocab", "tokens", "n_rows", "argmax", "logits_file"} plus
// "logits" (one list per row) when no -o is given. -o writes n_rows x n_vocab little-endian
// float32, row-major. Rows are the last token's (default) or every token's (--all). The KV cache
// is f32 and flash attention off unless --kv-f16 / --fa ask for llama.cpp's defaults.
//
// setup_env.py copies this file to tools/bitnet-logits/ of the pinned llama.cpp tree (patch 0005
// adds the target). Only the public llama.h API is used.

#include "llama.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

struct args {
    std::string model;
    std::string prompt;
    std::string ids;
    std::string out;
    bool        have_prompt   = false;
    bool        all           = false;
    bool        add_special   = true;
    bool        tokenize_only = false;
    bool        verbose       = false;
    bool        kv_f16        = false;
    bool        flash_attn    = false;
    int         n_threads     = 0;
    int         n_ubatch      = 0;
};

int usage(const char * argv0, const char * why) {
    if (why) {
        fprintf(stderr, "error: %s\n", why);
    }
    fprintf(stderr,
        "usage: %s -m model.gguf (-p TEXT | --ids 1,2,3) [--all] [-o FILE] [-t N] [--ubatch N]\n"
        "          [--kv-f16] [--fa] [--no-special] [--tokenize-only] [-v]\n", argv0);
    return 2;
}

bool parse_args(int argc, char ** argv, args & a, const char ** why) {
    for (int i = 1; i < argc; i++) {
        const std::string arg = argv[i];
        auto value = [&](const char * name) -> const char * {
            if (i + 1 >= argc) {
                static std::string msg;
                msg = std::string(name) + " needs a value";
                *why = msg.c_str();
                return nullptr;
            }
            return argv[++i];
        };
        const char * v = nullptr;
        if (arg == "-m" || arg == "--model") {
            if (!(v = value("-m"))) return false;
            a.model = v;
        } else if (arg == "-p" || arg == "--prompt") {
            if (!(v = value("-p"))) return false;
            a.prompt = v;
            a.have_prompt = true;
        } else if (arg == "--ids") {
            if (!(v = value("--ids"))) return false;
            a.ids = v;
        } else if (arg == "-o" || arg == "--output") {
            if (!(v = value("-o"))) return false;
            a.out = v;
        } else if (arg == "-t" || arg == "--threads") {
            if (!(v = value("-t"))) return false;
            a.n_threads = atoi(v);
        } else if (arg == "--ubatch") {
            if (!(v = value("--ubatch"))) return false;
            a.n_ubatch = atoi(v);
        } else if (arg == "--all") {
            a.all = true;
        } else if (arg == "--no-special") {
            a.add_special = false;
        } else if (arg == "--tokenize-only") {
            a.tokenize_only = true;
        } else if (arg == "--kv-f16") {
            a.kv_f16 = true;
        } else if (arg == "--fa") {
            a.flash_attn = true;
        } else if (arg == "-v" || arg == "--verbose") {
            a.verbose = true;
        } else {
            static std::string msg;
            msg = "unknown argument: " + arg;
            *why = msg.c_str();
            return false;
        }
    }
    if (a.model.empty()) {
        *why = "-m is required";
        return false;
    }
    if (a.have_prompt == !a.ids.empty()) {
        *why = "give exactly one of -p and --ids";
        return false;
    }
    return true;
}

bool parse_ids(const std::string & s, std::vector<llama_token> & out) {
    size_t pos = 0;
    while (pos < s.size()) {
        size_t end = s.find_first_of(", ", pos);
        if (end == std::string::npos) {
            end = s.size();
        }
        if (end > pos) {
            char * stop = nullptr;
            const long id = strtol(s.c_str() + pos, &stop, 10);
            if (stop != s.c_str() + end) {
                return false;
            }
            out.push_back((llama_token) id);
        }
        pos = end + 1;
    }
    return !out.empty();
}

void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

std::string json_string(const std::string & s) {
    std::string out = "\"";
    for (const char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if ((unsigned char) c < 0x20) {
            char buf[8];
            snprintf(buf, sizeof(buf), "\\u%04x", c);
            out += buf;
        } else {
            out += c;
        }
    }
    return out + "\"";
}

void print_ints(const std::vector<llama_token> & v) {
    printf("[");
    for (size_t i = 0; i < v.size(); i++) {
        printf("%s%d", i ? ", " : "", v[i]);
    }
    printf("]");
}

} // namespace

int main(int argc, char ** argv) {
    args a;
    const char * why = nullptr;
    if (!parse_args(argc, argv, a, &why)) {
        return usage(argv[0], why);
    }
    if (!a.verbose) {
        llama_log_set(quiet_log, nullptr);
    }

    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(a.model.c_str(), mparams);
    if (!model) {
        fprintf(stderr, "error: cannot load model %s\n", a.model.c_str());
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    // 1. tokens: given, or from the model's tokenizer
    std::vector<llama_token> tokens;
    if (!a.ids.empty()) {
        if (!parse_ids(a.ids, tokens)) {
            fprintf(stderr, "error: --ids wants comma-separated integers\n");
            return 2;
        }
        for (llama_token t : tokens) {
            if (t < 0 || t >= n_vocab) {
                fprintf(stderr, "error: token id %d is outside the vocabulary (0..%d)\n", t, n_vocab - 1);
                return 2;
            }
        }
    } else {
        const int n_max = (int) a.prompt.size() + 8;
        tokens.resize(n_max);
        const int n = llama_tokenize(vocab, a.prompt.c_str(), (int) a.prompt.size(), tokens.data(), n_max,
                                     a.add_special, /*parse_special*/ true);
        if (n < 0) {
            fprintf(stderr, "error: tokenization failed\n");
            return 1;
        }
        tokens.resize(n);
    }
    if (a.tokenize_only) {
        printf("{\"n_vocab\": %d, \"tokens\": ", n_vocab);
        print_ints(tokens);
        printf("}\n");
        llama_model_free(model);
        return 0;
    }
    if (tokens.empty()) {
        fprintf(stderr, "error: the prompt has no tokens\n");
        return 2;
    }

    // 2. one context that holds the whole prompt; ubatch can be lowered to test the GEMV path
    const int n_tok = (int) tokens.size();
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx    = (uint32_t) std::max(n_tok, 32);
    cparams.n_batch  = (uint32_t) n_tok;
    cparams.n_ubatch = (uint32_t) (a.n_ubatch > 0 ? std::min(a.n_ubatch, n_tok) : n_tok);
    const int n_threads = a.n_threads > 0 ? a.n_threads : (int) std::max(1u, std::thread::hardware_concurrency());
    cparams.n_threads       = n_threads;
    cparams.n_threads_batch = n_threads;
    cparams.no_perf         = true;
    // f32 KV cache and plain attention keep the comparison with a float32 reference to rounding
    // noise; --kv-f16 and --fa give llama.cpp's defaults (flash attention rounds Q to f16)
    if (!a.kv_f16) {
        cparams.type_k = GGML_TYPE_F32;
        cparams.type_v = GGML_TYPE_F32;
    }
    cparams.flash_attn_type = a.flash_attn ? LLAMA_FLASH_ATTN_TYPE_AUTO : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        fprintf(stderr, "error: cannot create a context\n");
        return 1;
    }

    llama_batch batch = llama_batch_init(n_tok, 0, 1);
    for (int i = 0; i < n_tok; i++) {
        batch.token[i]     = tokens[i];
        batch.pos[i]       = i;
        batch.n_seq_id[i]  = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i]    = a.all || i == n_tok - 1;
    }
    batch.n_tokens = n_tok;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "error: llama_decode failed\n");
        return 1;
    }

    // 3. rows of logits: to a float32 file, or inline in the JSON
    std::vector<int> rows;
    for (int i = a.all ? 0 : n_tok - 1; i < n_tok; i++) {
        rows.push_back(i);
    }
    FILE * fout = nullptr;
    if (!a.out.empty()) {
        fout = fopen(a.out.c_str(), "wb");
        if (!fout) {
            fprintf(stderr, "error: cannot write %s\n", a.out.c_str());
            return 1;
        }
    }
    std::vector<llama_token> argmax;
    std::string inline_logits;
    for (int i : rows) {
        const float * lg = llama_get_logits_ith(ctx, i);
        if (!lg) {
            fprintf(stderr, "error: no logits for token %d\n", i);
            return 1;
        }
        argmax.push_back((llama_token) (std::max_element(lg, lg + n_vocab) - lg));
        if (fout) {
            if (fwrite(lg, sizeof(float), n_vocab, fout) != (size_t) n_vocab) {
                fprintf(stderr, "error: short write to %s\n", a.out.c_str());
                return 1;
            }
        } else {
            inline_logits += inline_logits.empty() ? "[" : ", [";
            char buf[32];
            for (int j = 0; j < n_vocab; j++) {
                snprintf(buf, sizeof(buf), "%s%.9g", j ? ", " : "", lg[j]);
                inline_logits += buf;
            }
            inline_logits += "]";
        }
    }
    if (fout && fclose(fout) != 0) {
        fprintf(stderr, "error: cannot write %s\n", a.out.c_str());
        return 1;
    }

    printf("{\"n_vocab\": %d, \"tokens\": ", n_vocab);
    print_ints(tokens);
    printf(", \"n_rows\": %zu, \"argmax\": ", rows.size());
    print_ints(argmax);
    if (fout) {
        printf(", \"logits_file\": %s}\n", json_string(a.out).c_str());
    } else {
        printf(", \"logits_file\": null, \"logits\": [%s]}\n", inline_logits.c_str());
    }

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
