// lmhead-head-tool: inspection commands used by the tests and handy for users.
//   dump   --checkpoint=DIR [--weight_format --scale_mode --weight_name] --out=FILE
//          loads the head exactly as the server does and writes it as safetensors:
//          "weight" (U8 FP8 codes or BF16, [vocab, hidden]) and "row_scales" (F32 [vocab]).
//   encode --in=FILE --out=FILE
//          raw little-endian float32 in, one FP8 E4M3 code per value out.
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "kernels/fp8.h"
#include "service/util/log.h"
#include "service/weights/head_loader.h"
#include "service/weights/safetensors_writer.h"

ABSL_FLAG(std::string, checkpoint, "", "dump: checkpoint directory");
ABSL_FLAG(std::string, weight_name, "", "dump: head tensor name override");
ABSL_FLAG(std::string, weight_format, "fp8_e4m3", "dump: fp8_e4m3 | bf16");
ABSL_FLAG(std::string, scale_mode, "per_row", "dump: per_row | per_tensor | none");
ABSL_FLAG(std::string, in, "", "encode: input file of float32 values");
ABSL_FLAG(std::string, out, "", "output file");

namespace {

int Fail(const std::string& message) {
  LOG_ERROR() << message;
  return 2;
}

int Dump() {
  lmhead::HeadLoadOptions options;
  options.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint);
  options.weight_name = absl::GetFlag(FLAGS_weight_name);
  options.log_progress = false;
  if (!lmhead::ParseWeightFormat(absl::GetFlag(FLAGS_weight_format), &options.format) ||
      !lmhead::ParseScaleMode(absl::GetFlag(FLAGS_scale_mode), &options.scale_mode)) {
    return Fail("bad --weight_format or --scale_mode");
  }
  auto head = lmhead::LoadHead(options);
  if (!head.ok()) return Fail(std::string(head.status().message()));
  const lmhead::HeadWeights& w = head->weights;
  const bool fp8 = w.format == lmhead::WeightFormat::kFp8E4m3;
  std::vector<lmhead::StTensorDecl> decls = {
      {"weight", fp8 ? lmhead::StDType::kU8 : lmhead::StDType::kBF16, {w.vocab, w.hidden}}};
  if (fp8) decls.push_back({"row_scales", lmhead::StDType::kF32, {w.vocab}});
  lmhead::SafetensorsWriter writer;
  absl::Status s = writer.Open(
      absl::GetFlag(FLAGS_out), decls,
      {{"weight_format", std::string(lmhead::WeightFormatName(w.format))},
       {"scale_mode", std::string(lmhead::ScaleModeName(w.scale_mode))},
       {"weight_name", head->weight_name},
       {"logit_scale", absl::StrCat(head->Transform().scale)},
       {"final_logit_softcapping", absl::StrCat(head->Transform().softcap)}});
  if (s.ok()) s = writer.Append(w.data.data(), w.data.size());
  if (s.ok() && fp8) s = writer.Append(w.row_scales.data(), w.row_scales.size() * sizeof(float));
  if (s.ok()) s = writer.Close();
  return s.ok() ? 0 : Fail(std::string(s.message()));
}

int Encode() {
  std::ifstream in(absl::GetFlag(FLAGS_in), std::ios::binary);
  if (!in) return Fail("cannot read --in");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() % 4 != 0) return Fail("--in must hold whole float32 values");
  std::vector<float> values(bytes.size() / 4);
  std::memcpy(values.data(), bytes.data(), bytes.size());
  std::vector<uint8_t> codes(values.size());
  for (size_t i = 0; i < values.size(); ++i) codes[i] = lmhead::Fp8E4m3Encode(values[i]);
  std::ofstream out(absl::GetFlag(FLAGS_out), std::ios::binary);
  out.write(reinterpret_cast<const char*>(codes.data()), codes.size());
  return out ? 0 : Fail("cannot write --out");
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("lmhead-head-tool dump|encode [flags]");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) return Fail("usage: lmhead-head-tool dump|encode [flags]");
  if (absl::GetFlag(FLAGS_out).empty()) return Fail("--out is required");
  const std::string command = args[1];
  if (command == "dump") return Dump();
  if (command == "encode") return Encode();
  return Fail("unknown command '" + command + "'; expected dump or encode");
}
