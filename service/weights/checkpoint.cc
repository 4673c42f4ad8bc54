#include "service/weights/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/status_macros.h"
#include "nlohmann/json.hpp"

namespace lmhead {
namespace {

namespace fs = std::filesystem;

constexpr const char* kHeadName = "lm_head.weight";
// Input-embedding names used by common architectures, tried in order for tied heads.
constexpr const char* kEmbeddingNames[] = {
    "model.embed_tokens.weight", "model.language_model.embed_tokens.weight",
    "transformer.wte.weight", "model.decoder.embed_tokens.weight", "transformer.word_embeddings.weight",
    "gpt_neox.embed_in.weight"};

absl::StatusOr<std::string> ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Which file holds each tensor: the index's weight_map, or everything in model.safetensors.
class TensorDirectory {
 public:
  absl::Status Init(const fs::path& dir) {
    dir_ = dir;
    const fs::path index = dir / "model.safetensors.index.json";
    if (fs::exists(index)) return ReadIndex(index);
    single_ = dir / "model.safetensors";
    if (!fs::exists(single_)) {
      return absl::NotFoundError(absl::StrCat(
          "checkpoint ", dir.string(), " has neither model.safetensors nor model.safetensors.index.json"));
    }
    return absl::OkStatus();
  }

  // The tensor, or NOT_FOUND; `name` need not exist when `required` is false (info stays null).
  absl::StatusOr<TensorRef> Find(const std::string& name, bool required) {
    fs::path path = single_;
    if (!weight_map_.empty()) {
      auto it = weight_map_.find(name);
      if (it == weight_map_.end()) {
        if (!required) return TensorRef{};
        return absl::NotFoundError(absl::StrCat("tensor '", name, "' is not in ",
                                                (dir_ / "model.safetensors.index.json").string()));
      }
      path = dir_ / it->second;
    }
    ASSIGN_OR_RETURN(auto file, OpenFile(path));
    const StTensorInfo* info = file->Find(name);
    if (info == nullptr) {
      if (!required) return TensorRef{};
      return absl::NotFoundError(absl::StrCat("tensor '", name, "' is not in ", path.string()));
    }
    return TensorRef{file, info};
  }

  bool Has(const std::string& name) {
    if (!weight_map_.empty()) return weight_map_.count(name) > 0;
    auto file = OpenFile(single_);
    return file.ok() && (*file)->Find(name) != nullptr;
  }

 private:
  absl::Status ReadIndex(const fs::path& index) {
    ASSIGN_OR_RETURN(std::string text, ReadText(index));
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    const std::string where = index.string();
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " is not a JSON object"));
    }
    auto map = j.find("weight_map");
    if (map == j.end() || !map->is_object() || map->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " has no weight_map object"));
    }
    for (auto it = map->begin(); it != map->end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": weight_map entry '", it.key(), "' is not a file name"));
      }
      const std::string file = it.value().get<std::string>();
      if (file.empty() || absl::StrContains(file, "/") || absl::StrContains(file, "\\") ||
          file == "." || file == "..") {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": weight_map entry '", it.key(), "' names '", file,
                         "', which is not a file in the checkpoint directory"));
      }
      weight_map_[it.key()] = file;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::shared_ptr<const SafetensorsFile>> OpenFile(const fs::path& path) {
    auto it = files_.find(path.string());
    if (it != files_.end()) return it->second;
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path.string()));
    std::shared_ptr<const SafetensorsFile> shared = std::move(file);
    files_[path.string()] = shared;
    return shared;
  }

  fs::path dir_;
  fs::path single_;
  std::map<std::string, std::string> weight_map_;
  std::map<std::string, std::shared_ptr<const SafetensorsFile>> files_;
};

absl::StatusOr<std::string> ChooseHeadName(const ModelConfig& config, TensorDirectory& tensors,
                                           bool* tied) {
  *tied = false;
  if (tensors.Has(kHeadName)) return std::string(kHeadName);
  if (config.tie_word_embeddings.value_or(true)) {
    for (const char* name : kEmbeddingNames) {
      if (tensors.Has(name)) {
        *tied = true;
        return std::string(name);
      }
    }
    return absl::NotFoundError(absl::StrCat(
        "checkpoint has no '", kHeadName, "' and none of the tied embedding tensors (",
        absl::StrJoin(kEmbeddingNames, ", "), "); pass --weight_name"));
  }
  return absl::NotFoundError(absl::StrCat("checkpoint has no '", kHeadName,
                                          "' and config.json says tie_word_embeddings=false"));
}

}  // namespace

absl::StatusOr<Checkpoint> OpenCheckpoint(const std::string& dir, const std::string& weight_name) {
  Checkpoint ckpt;
  ckpt.dir = dir;
  if (!fs::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat("checkpoint directory ", dir, " does not exist"));
  }
  ASSIGN_OR_RETURN(std::string config_text, ReadText(fs::path(dir) / "config.json"));
  ASSIGN_OR_RETURN(ckpt.config, ParseModelConfig(config_text));

  TensorDirectory tensors;
  RETURN_IF_ERROR(tensors.Init(dir));
  if (weight_name.empty()) {
    ASSIGN_OR_RETURN(ckpt.weight_name, ChooseHeadName(ckpt.config, tensors, &ckpt.tied));
  } else {
    ckpt.weight_name = weight_name;
    ckpt.tied = weight_name != kHeadName && absl::StrContains(weight_name, "embed");
  }
  ASSIGN_OR_RETURN(ckpt.weight, tensors.Find(ckpt.weight_name, /*required=*/true));

  const StTensorInfo& w = *ckpt.weight.info;
  const std::string where = absl::StrCat("tensor '", w.name, "' in ", ckpt.weight.file->path());
  if (w.dtype != StDType::kBF16 && w.dtype != StDType::kF16 && w.dtype != StDType::kF32 &&
      w.dtype != StDType::kF8E4M3) {
    return absl::InvalidArgumentError(absl::StrCat(where, " has dtype ", StDTypeName(w.dtype),
                                                   "; the head must be BF16, F16, F32 or F8_E4M3"));
  }
  if (w.shape.size() != 2 || w.shape[0] != ckpt.config.vocab_size ||
      w.shape[1] != ckpt.config.hidden_size) {
    std::string shape = absl::StrJoin(w.shape, ", ");
    return absl::InvalidArgumentError(absl::StrCat(
        where, " has shape [", shape, "] but config.json says [vocab_size=", ckpt.config.vocab_size,
        ", hidden_size=", ckpt.config.hidden_size, "]"));
  }
  if (w.dtype == StDType::kF8E4M3) {
    std::string scale_name = ckpt.weight_name;
    if (absl::EndsWith(scale_name, ".weight")) scale_name.resize(scale_name.size() - 7);
    scale_name += ".weight_scale";
    ASSIGN_OR_RETURN(ckpt.weight_scale, tensors.Find(scale_name, /*required=*/false));
    if (const StTensorInfo* s = ckpt.weight_scale.info) {
      const int64_t n = s->NumElements();
      if ((s->dtype != StDType::kF32 && s->dtype != StDType::kBF16 && s->dtype != StDType::kF16) ||
          (n != 1 && n != ckpt.config.vocab_size)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", scale_name, "' must be F32/BF16/F16 with 1 (per-tensor) or ",
            ckpt.config.vocab_size, " (per-row) elements; it is ", StDTypeName(s->dtype), " with ", n));
      }
    }
  }
  return ckpt;
}

}  // namespace lmhead
