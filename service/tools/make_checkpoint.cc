// lmhead-make-checkpoint: writes an HF-style checkpoint directory (config.json +
// model.safetensors, or shards with model.safetensors.index.json) holding a seeded synthetic
// head with realistic statistics: per-row std lognormal around 0.02 and a few heavy-tailed
// entries. Any shape; rows are generated and written in chunks, so memory stays small.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "kernels/half.h"
#include "nlohmann/json.hpp"
#include "service/util/log.h"
#include "service/weights/safetensors_writer.h"

ABSL_FLAG(std::string, out, "", "Output directory (created)");
ABSL_FLAG(int64_t, vocab, 32000, "vocab_size (rows of the head)");
ABSL_FLAG(int64_t, hidden, 1024, "hidden_size (columns of the head)");
ABSL_FLAG(std::string, dtype, "bf16", "Stored dtype: bf16 | f16 | f32");
ABSL_FLAG(uint64_t, seed, 1, "Random seed; the same seed and shape give the same file");
ABSL_FLAG(int, shards, 1, "1 = model.safetensors; N > 1 = N shard files plus an index");
ABSL_FLAG(bool, tied, false, "Store the head only as model.embed_tokens.weight (tie_word_embeddings)");
ABSL_FLAG(double, row_std, 0.02, "Median per-row standard deviation");
ABSL_FLAG(double, final_logit_softcapping, 0.0, "Written to config.json when > 0");
ABSL_FLAG(double, logit_scale, 0.0, "Written to config.json when > 0");
ABSL_FLAG(std::string, model_name, "lmhead-demo", "config.json _name_or_path");

namespace {

namespace fs = std::filesystem;
using lmhead::StDType;

struct Spec {
  int64_t vocab, hidden;
  StDType dtype;
  uint64_t seed;
  double row_std;
};

// Row r of the synthetic head, as floats. Depends only on (seed, r): rows can be made in any order.
void MakeRow(const Spec& spec, int64_t r, std::vector<float>* row) {
  std::mt19937_64 rng(spec.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(r));
  std::normal_distribution<double> normal(0.0, 1.0);
  std::student_t_distribution<double> heavy(3.0);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const double std = spec.row_std * std::exp(0.25 * normal(rng));
  for (int64_t i = 0; i < spec.hidden; ++i) {
    double v = std * normal(rng);
    if (uniform(rng) < 1e-3) v = std * 6.0 * heavy(rng);  // rare heavy-tailed outliers
    (*row)[i] = static_cast<float>(v);
  }
}

void AppendRow(StDType dtype, const std::vector<float>& row, std::vector<uint8_t>* out) {
  for (float v : row) {
    if (dtype == StDType::kF32) {
      const uint32_t b = lmhead::FloatBits(v);
      for (int k = 0; k < 4; ++k) out->push_back(static_cast<uint8_t>(b >> (8 * k)));
    } else {
      const uint16_t b = dtype == StDType::kBF16 ? lmhead::FloatToBf16(v) : lmhead::FloatToHalf(v);
      out->push_back(static_cast<uint8_t>(b));
      out->push_back(static_cast<uint8_t>(b >> 8));
    }
  }
}

absl::Status WriteHead(const Spec& spec, lmhead::SafetensorsWriter& writer) {
  std::vector<float> row(spec.hidden);
  std::vector<uint8_t> chunk;
  for (int64_t r = 0; r < spec.vocab; ++r) {
    MakeRow(spec, r, &row);
    AppendRow(spec.dtype, row, &chunk);
    if (chunk.size() >= (16u << 20) || r + 1 == spec.vocab) {
      if (absl::Status s = writer.Append(chunk.data(), chunk.size()); !s.ok()) return s;
      chunk.clear();
    }
  }
  return absl::OkStatus();
}

absl::Status WriteNorm(const Spec& spec, lmhead::SafetensorsWriter& writer) {
  std::vector<float> ones(spec.hidden, 1.0f);
  std::vector<uint8_t> bytes;
  AppendRow(spec.dtype, ones, &bytes);
  return writer.Append(bytes.data(), bytes.size());
}

int Fail(const std::string& message) {
  LOG_ERROR() << message;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("lmhead-make-checkpoint --out=DIR [--vocab=V --hidden=H ...]");
  absl::ParseCommandLine(argc, argv);
  const std::string out = absl::GetFlag(FLAGS_out);
  Spec spec{absl::GetFlag(FLAGS_vocab), absl::GetFlag(FLAGS_hidden), StDType::kBF16,
            absl::GetFlag(FLAGS_seed), absl::GetFlag(FLAGS_row_std)};
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  const int shards = absl::GetFlag(FLAGS_shards);
  const bool tied = absl::GetFlag(FLAGS_tied);
  if (out.empty()) return Fail("--out is required");
  if (spec.vocab < 1 || spec.hidden < 1) return Fail("--vocab and --hidden must be positive");
  if (dtype == "f16") spec.dtype = StDType::kF16;
  else if (dtype == "f32") spec.dtype = StDType::kF32;
  else if (dtype != "bf16") return Fail("--dtype must be bf16, f16 or f32");
  if (shards < 1 || shards > 99) return Fail("--shards must be 1..99");
  if (!(spec.row_std > 0)) return Fail("--row_std must be positive");

  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) return Fail(absl::StrFormat("cannot create %s: %s", out, ec.message()));

  nlohmann::ordered_json config = {
      {"_name_or_path", absl::GetFlag(FLAGS_model_name)},
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"vocab_size", spec.vocab},
      {"hidden_size", spec.hidden},
      {"tie_word_embeddings", tied},
      {"torch_dtype", dtype == "bf16" ? "bfloat16" : dtype == "f16" ? "float16" : "float32"}};
  if (absl::GetFlag(FLAGS_final_logit_softcapping) > 0) {
    config["final_logit_softcapping"] = absl::GetFlag(FLAGS_final_logit_softcapping);
  }
  if (absl::GetFlag(FLAGS_logit_scale) > 0) config["logit_scale"] = absl::GetFlag(FLAGS_logit_scale);
  std::ofstream(fs::path(out) / "config.json") << config.dump(2) << "\n";

  // Tensors: the final norm (a small stand-in for the rest of the model) and the head.
  const std::string head_name = tied ? "model.embed_tokens.weight" : "lm_head.weight";
  struct Entry {
    lmhead::StTensorDecl decl;
    bool is_head;
  };
  std::vector<Entry> entries = {{{"model.norm.weight", spec.dtype, {spec.hidden}}, false},
                                {{head_name, spec.dtype, {spec.vocab, spec.hidden}}, true}};
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (int shard = 0; shard < shards; ++shard) {
    // Shard k holds entry k; the last shard holds the rest (empty shards hold nothing).
    std::vector<Entry> mine;
    for (size_t i = 0; i < entries.size(); ++i) {
      if (static_cast<int>(std::min<size_t>(i, shards - 1)) == shard) mine.push_back(entries[i]);
    }
    const std::string file = shards == 1 ? "model.safetensors"
                                         : absl::StrFormat("model-%05d-of-%05d.safetensors", shard + 1, shards);
    std::vector<lmhead::StTensorDecl> decls;
    for (const Entry& e : mine) {
      decls.push_back(e.decl);
      weight_map[e.decl.name] = file;
    }
    lmhead::SafetensorsWriter writer;
    absl::Status s = writer.Open((fs::path(out) / file).string(), decls, {{"format", "pt"}});
    for (const Entry& e : mine) {
      if (s.ok()) s = e.is_head ? WriteHead(spec, writer) : WriteNorm(spec, writer);
    }
    if (s.ok()) s = writer.Close();
    if (!s.ok()) return Fail(std::string(s.message()));
  }
  if (shards > 1) {
    const int64_t total = (spec.vocab + 1) * spec.hidden * static_cast<int64_t>(lmhead::StDTypeSize(spec.dtype));
    nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    std::ofstream(fs::path(out) / "model.safetensors.index.json") << index.dump(2) << "\n";
  }
  LOG_INFO() << absl::StrFormat("wrote %s: %s [%d, %d] %s, %d file(s)", out, head_name, spec.vocab,
                                spec.hidden, dtype, shards);
  return 0;
}
