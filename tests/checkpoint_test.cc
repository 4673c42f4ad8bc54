#include "service/weights/checkpoint.h"

#include <filesystem>

#include "gtest/gtest.h"
#include "service/weights/head_loader.h"
#include "service/weights/model_config.h"
#include "service/weights/safetensors_writer.h"
#include "tests/test_util.h"

namespace lmhead {
namespace {

using testing::TempDir;
using testing::WriteFile;

constexpr int64_t kVocab = 64;
constexpr int64_t kHidden = 32;

void WriteTensors(const std::string& path, const std::vector<StTensorDecl>& decls) {
  SafetensorsWriter w;
  ASSERT_TRUE(w.Open(path, decls).ok());
  for (const auto& d : decls) {
    int64_t n = StDTypeSize(d.dtype);
    for (int64_t s : d.shape) n *= s;
    std::string zeros(n, '\0');
    ASSERT_TRUE(w.Append(zeros.data(), zeros.size()).ok());
  }
  ASSERT_TRUE(w.Close().ok());
}

void ExpectError(const absl::StatusOr<Checkpoint>& c, absl::StatusCode code, const std::string& text) {
  ASSERT_FALSE(c.ok()) << "expected: " << text;
  EXPECT_EQ(c.status().code(), code) << c.status();
  EXPECT_NE(c.status().message().find(text), std::string::npos) << c.status();
}

std::string Config(const std::string& extra = "") {
  return "{\"vocab_size\": 64, \"hidden_size\": 32" + extra + "}";
}

TEST(ModelConfigTest, ParsesFieldsAndNestedTextConfig) {
  auto c = ParseModelConfig(
      R"({"model_type": "gemma2", "text_config": {"vocab_size": 256000, "hidden_size": 3584},
          "final_logit_softcapping": 30.0, "tie_word_embeddings": true, "_name_or_path": "g"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 256000);
  EXPECT_EQ(c->hidden_size, 3584);
  EXPECT_EQ(c->final_logit_softcapping, 30.0f);
  EXPECT_EQ(c->tie_word_embeddings, true);
  EXPECT_EQ(c->name_or_path, "g");
  auto gpt2 = ParseModelConfig(R"({"vocab_size": 50257, "n_embd": 768, "logit_scale": 0.0625})");
  ASSERT_TRUE(gpt2.ok());
  EXPECT_EQ(gpt2->hidden_size, 768);
  EXPECT_EQ(gpt2->logit_scale, 0.0625f);
  EXPECT_FALSE(gpt2->tie_word_embeddings.has_value());
}

TEST(ModelConfigTest, BadConfigsNameTheKey) {
  const std::pair<const char*, const char*> cases[] = {
      {"{nope", "not valid JSON"},
      {"[]", "not a JSON object"},
      {R"({"hidden_size": 8})", "missing 'vocab_size'"},
      {R"({"vocab_size": 8})", "missing 'hidden_size'"},
      {R"({"vocab_size": "8", "hidden_size": 8})", "'vocab_size' must be a positive integer"},
      {R"({"vocab_size": 0, "hidden_size": 8})", "'vocab_size' must be a positive integer"},
      {R"({"vocab_size": 8, "hidden_size": 8, "tie_word_embeddings": "yes"})", "'tie_word_embeddings' must be a boolean"},
      {R"({"vocab_size": 8, "hidden_size": 8, "final_logit_softcapping": -1})", "'final_logit_softcapping'"},
  };
  for (const auto& [text, message] : cases) {
    auto c = ParseModelConfig(text);
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_NE(c.status().message().find(message), std::string::npos) << c.status();
  }
}

TEST(CheckpointTest, FindsLmHeadOrTiedEmbeddingOrOverride) {
  TempDir dir;
  WriteFile(dir.File("config.json"), Config());
  WriteTensors(dir.File("model.safetensors"),
               {{"model.embed_tokens.weight", StDType::kBF16, {kVocab, kHidden}},
                {"lm_head.weight", StDType::kF16, {kVocab, kHidden}}});
  auto c = OpenCheckpoint(dir.path(), "");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->weight_name, "lm_head.weight");
  EXPECT_FALSE(c->tied);
  auto o = OpenCheckpoint(dir.path(), "model.embed_tokens.weight");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->weight.info->dtype, StDType::kBF16);

  TempDir tied;
  WriteFile(tied.File("config.json"), Config(", \"tie_word_embeddings\": true"));
  WriteTensors(tied.File("model.safetensors"), {{"model.embed_tokens.weight", StDType::kBF16, {kVocab, kHidden}}});
  auto t = OpenCheckpoint(tied.path(), "");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->weight_name, "model.embed_tokens.weight");
  EXPECT_TRUE(t->tied);
}

TEST(CheckpointTest, MalformedCheckpointsGiveClearErrors) {
  {
    TempDir d;  // no config.json
    WriteTensors(d.File("model.safetensors"), {{"lm_head.weight", StDType::kBF16, {kVocab, kHidden}}});
    ExpectError(OpenCheckpoint(d.path(), ""), absl::StatusCode::kNotFound, "config.json");
  }
  {
    TempDir d;  // no weights at all
    WriteFile(d.File("config.json"), Config());
    ExpectError(OpenCheckpoint(d.path(), ""), absl::StatusCode::kNotFound, "has neither model.safetensors");
  }
  {
    TempDir d;  // untied model without lm_head
    WriteFile(d.File("config.json"), Config(", \"tie_word_embeddings\": false"));
    WriteTensors(d.File("model.safetensors"), {{"model.embed_tokens.weight", StDType::kBF16, {kVocab, kHidden}}});
    ExpectError(OpenCheckpoint(d.path(), ""), absl::StatusCode::kNotFound, "tie_word_embeddings=false");
  }
  {
    TempDir d;  // no head and no embedding
    WriteFile(d.File("config.json"), Config());
    WriteTensors(d.File("model.safetensors"), {{"model.norm.weight", StDType::kBF16, {kHidden}}});
    ExpectError(OpenCheckpoint(d.path(), ""), absl::StatusCode::kNotFound, "pass --weight_name");
  }
  {
    TempDir d;  // override names a missing tensor
    WriteFile(d.File("config.json"), Config());
    WriteTensors(d.File("model.safetensors"), {{"lm_head.weight", StDType::kBF16, {kVocab, kHidden}}});
    ExpectError(OpenCheckpoint(d.path(), "head.w"), absl::StatusCode::kNotFound, "tensor 'head.w' is not in");
  }
  {
    TempDir d;  // shape disagrees with config
    WriteFile(d.File("config.json"), Config());
    WriteTensors(d.File("model.safetensors"), {{"lm_head.weight", StDType::kBF16, {kVocab + 1, kHidden}}});
    ExpectError(OpenCheckpoint(d.path(), ""), absl::StatusCode::kInvalidArgument,
                "has shape [65, 32] but config.json says [vocab_size=64, hidden_size=32]");
  }
  {
    TempDir d;  // integer head
    WriteFile(d.File("config.json"), Config());
    WriteTensors(d.File("model.safetensors"), {{"lm_head.weight", StDType::kI32, {kVocab, kHidden}}});
    ExpectError(OpenCheckpoint(d.path(), ""), absl::StatusCode::kInvalidArgument, "must be BF16, F16, F32 or F8_E4M3");
  }
  {
    TempDir d;  // FP8 head with a scale of the wrong size
    WriteFile(d.File("config.json"), Config());
    WriteTensors(d.File("model.safetensors"), {{"lm_head.weight", StDType::kF8E4M3, {kVocab, kHidden}},
                                               {"lm_head.weight_scale", StDType::kF32, {3}}});
    ExpectError(OpenCheckpoint(d.path(), ""), absl::StatusCode::kInvalidArgument, "1 (per-tensor) or 64 (per-row)");
  }
}

TEST(CheckpointTest, ShardedIndexErrors) {
  const std::pair<const char*, const char*> bad_indexes[] = {
      {"not json", "is not a JSON object"},
      {R"({"metadata": {}})", "has no weight_map object"},
      {R"({"weight_map": {"lm_head.weight": 3}})", "is not a file name"},
      {R"({"weight_map": {"lm_head.weight": "../outside.safetensors"}})", "not a file in the checkpoint directory"},
  };
  for (const auto& [index, message] : bad_indexes) {
    TempDir d;
    WriteFile(d.File("config.json"), Config());
    WriteFile(d.File("model.safetensors.index.json"), index);
    ExpectError(OpenCheckpoint(d.path(), ""), absl::StatusCode::kInvalidArgument, message);
  }
  {
    TempDir d;  // index names a shard that does not exist
    WriteFile(d.File("config.json"), Config());
    WriteFile(d.File("model.safetensors.index.json"), R"({"weight_map": {"lm_head.weight": "model-1.safetensors"}})");
    ExpectError(OpenCheckpoint(d.path(), ""), absl::StatusCode::kNotFound, "model-1.safetensors");
  }
  {
    TempDir d;  // index maps the head to a shard that lacks it
    WriteFile(d.File("config.json"), Config());
    WriteTensors(d.File("model-1.safetensors"), {{"model.norm.weight", StDType::kBF16, {kHidden}}});
    WriteFile(d.File("model.safetensors.index.json"), R"({"weight_map": {"lm_head.weight": "model-1.safetensors"}})");
    ExpectError(OpenCheckpoint(d.path(), ""), absl::StatusCode::kNotFound, "tensor 'lm_head.weight' is not in");
  }
  {
    TempDir d;  // a good sharded checkpoint
    WriteFile(d.File("config.json"), Config());
    WriteTensors(d.File("model-1.safetensors"), {{"model.norm.weight", StDType::kBF16, {kHidden}}});
    WriteTensors(d.File("model-2.safetensors"), {{"lm_head.weight", StDType::kBF16, {kVocab, kHidden}}});
    WriteFile(d.File("model.safetensors.index.json"),
              R"({"weight_map": {"model.norm.weight": "model-1.safetensors", "lm_head.weight": "model-2.safetensors"}})");
    auto c = OpenCheckpoint(d.path(), "");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_NE(c->weight.file->path().find("model-2.safetensors"), std::string::npos);
  }
}

TEST(HeadLoaderTest, LoadsAndReportsTransform) {
  TempDir d;
  testing::WriteBf16Checkpoint(d.path(), testing::RandomWeights(kVocab, kHidden, 1), kVocab, kHidden,
                               "lm_head.weight", ", \"final_logit_softcapping\": 30, \"logit_scale\": 0.5");
  HeadLoadOptions opt;
  opt.checkpoint_dir = d.path();
  opt.log_progress = false;
  auto head = LoadHead(opt);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->weights.vocab, kVocab);
  EXPECT_EQ(head->source_dtype, "BF16");
  EXPECT_EQ(head->Transform().softcap, 30.0f);
  EXPECT_EQ(head->Transform().scale, 0.5f);
  EXPECT_GE(head->load_seconds, 0.0);
}

}  // namespace
}  // namespace lmhead
