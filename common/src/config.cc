#include "strata/common/config.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "strata/common/byte_size.h"
#include "yaml-cpp/yaml.h"

namespace strata {
namespace {

std::string FlagName(const std::string& name) {
  return "--" + absl::StrReplaceAll(name, {{"_", "-"}});
}

std::string EnvName(const std::string& name) { return "STRATA_" + absl::AsciiStrToUpper(name); }

// Accepts --warm-bytes and --warm_bytes alike.
std::string NormalizeFlag(std::string_view flag) {
  std::string s(flag);
  return absl::StrReplaceAll(s, {{"-", "_"}});
}

absl::StatusOr<bool> ParseBool(const std::string& value, std::string_view field) {
  std::string v = absl::AsciiStrToLower(value);
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  return absl::InvalidArgumentError(
      absl::StrCat(std::string(field), ": '", value, "' is not a boolean (true/false)"));
}

}  // namespace

absl::StatusOr<uint64_t> ParseDurationMs(std::string_view text, std::string_view field) {
  std::string s(absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size())));
  // A year at most: anything longer ("inf", 100000000h) is a mistake, and past int64
  // milliseconds a deadline computed from it overflows into the past.
  constexpr uint64_t kMaxMs = 366ull * 24 * 3600 * 1000;
  uint64_t ms = 0;
  absl::Duration d;
  if (absl::SimpleAtoi(s, &ms)) {
    d = absl::Milliseconds(static_cast<int64_t>(std::min<uint64_t>(ms, kMaxMs + 1)));
  } else if (!absl::ParseDuration(s, &d) || d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ": '", s, "' is not a duration (e.g. 500ms, 30s, 2m)"));
  }
  if (d > absl::Milliseconds(static_cast<int64_t>(kMaxMs))) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ": '", s, "' is longer than a year"));
  }
  return static_cast<uint64_t>(absl::ToInt64Milliseconds(d));
}

ConfigSchema::ConfigSchema(std::string program, std::string summary)
    : program_(std::move(program)), summary_(std::move(summary)) {}

void ConfigSchema::Add(std::string name, Kind kind, void* target, std::string help) {
  std::string def;
  switch (kind) {
    case Kind::kString:
      def = *static_cast<std::string*>(target);
      break;
    case Kind::kBytes: {
      uint64_t v = *static_cast<uint64_t*>(target);
      def = FormatByteSize(v);
      break;
    }
    case Kind::kUint:
      def = absl::StrCat(*static_cast<uint64_t*>(target));
      break;
    case Kind::kDurationMs:
      def = absl::StrCat(*static_cast<uint64_t*>(target), "ms");
      break;
    case Kind::kBool:
      def = *static_cast<bool*>(target) ? "true" : "false";
      break;
  }
  options_.push_back(Option{std::move(name), kind, target, std::move(help), std::move(def)});
}

void ConfigSchema::AddString(std::string name, std::string* target, std::string help) {
  Add(std::move(name), Kind::kString, target, std::move(help));
}
void ConfigSchema::AddBytes(std::string name, uint64_t* target, std::string help) {
  Add(std::move(name), Kind::kBytes, target, std::move(help));
}
void ConfigSchema::AddUint(std::string name, uint64_t* target, std::string help) {
  Add(std::move(name), Kind::kUint, target, std::move(help));
}
void ConfigSchema::AddDurationMs(std::string name, uint64_t* target, std::string help) {
  Add(std::move(name), Kind::kDurationMs, target, std::move(help));
}
void ConfigSchema::AddBool(std::string name, bool* target, std::string help) {
  Add(std::move(name), Kind::kBool, target, std::move(help));
}

ConfigSchema::Option* ConfigSchema::Find(std::string_view name) {
  for (Option& o : options_) {
    if (o.name == name) return &o;
  }
  return nullptr;
}

absl::Status ConfigSchema::Assign(Option& option, const std::string& value,
                                  std::string_view source) {
  std::string field = absl::StrCat(option.name, " (", std::string(source), ")");
  switch (option.kind) {
    case Kind::kString:
      *static_cast<std::string*>(option.target) = value;
      return absl::OkStatus();
    case Kind::kBytes: {
      absl::StatusOr<uint64_t> v = ParseByteSize(value, field);
      if (!v.ok()) return v.status();
      *static_cast<uint64_t*>(option.target) = *v;
      return absl::OkStatus();
    }
    case Kind::kUint: {
      uint64_t v = 0;
      if (!absl::SimpleAtoi(value, &v)) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": '", value, "' is not a non-negative integer"));
      }
      *static_cast<uint64_t*>(option.target) = v;
      return absl::OkStatus();
    }
    case Kind::kDurationMs: {
      absl::StatusOr<uint64_t> v = ParseDurationMs(value, field);
      if (!v.ok()) return v.status();
      *static_cast<uint64_t*>(option.target) = *v;
      return absl::OkStatus();
    }
    case Kind::kBool: {
      absl::StatusOr<bool> v = ParseBool(value, field);
      if (!v.ok()) return v.status();
      *static_cast<bool*>(option.target) = *v;
      return absl::OkStatus();
    }
  }
  return absl::InternalError("unreachable option kind");
}

absl::Status ConfigSchema::ApplyYaml(const std::string& path) {
  // A directory opens as a stream that reads nothing: it would pass for an empty file (the
  // mount of a ConfigMap given in place of the file in it).
  if (std::error_code ec; std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: '", path, "' is a directory, not a YAML file"));
  }
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("config: cannot read '", path, "'"));
  }
  YAML::Node root;
  // yaml-cpp reports syntax errors by exception; convert them here, at the boundary.
  try {
    root = YAML::Load(in);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", path, ": ", e.what()));
  }
  if (in.bad()) {
    return absl::InvalidArgumentError(absl::StrCat("config: reading '", path, "' failed"));
  }
  if (root.IsNull()) return absl::OkStatus();
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: ", path, ": top level must be a map of option: value"));
  }
  for (const auto& kv : root) {
    std::string key = kv.first.Scalar();
    Option* o = Find(key);
    if (o == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: ", path, ": unknown key '", key, "'"));
    }
    if (!kv.second.IsScalar()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: ", path, ": key '", key, "' must have a scalar value"));
    }
    absl::Status s = Assign(*o, kv.second.Scalar(), path);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<ConfigSchema::Outcome> ConfigSchema::Parse(int argc, const char* const* argv,
                                                          const EnvLookup& env) {
  // First pass: split flags into (name, value) pairs and find --config / --help.
  std::vector<std::pair<std::string, std::string>> flags;
  std::string config_path;
  if (std::optional<std::string> e = env("STRATA_CONFIG")) config_path = *e;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return Outcome::kHelp;
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    name = NormalizeFlag(name);
    if (name == "config") {
      if (!has_value) {
        if (i + 1 >= argc) return absl::InvalidArgumentError("--config: missing FILE");
        value = argv[++i];
      }
      config_path = value;
      continue;
    }
    Option* o = Find(name);
    if (o == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '--", name, "' (see --help)"));
    }
    if (!has_value) {
      if (o->kind == Kind::kBool) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat(FlagName(name), ": missing value"));
      }
    }
    flags.emplace_back(name, value);
  }

  if (!config_path.empty()) {
    if (absl::Status s = ApplyYaml(config_path); !s.ok()) return s;
  }
  for (Option& o : options_) {
    std::string env_name = EnvName(o.name);
    if (std::optional<std::string> v = env(env_name)) {
      if (absl::Status s = Assign(o, *v, env_name); !s.ok()) return s;
    }
  }
  for (const auto& [name, value] : flags) {
    if (absl::Status s = Assign(*Find(name), value, FlagName(name)); !s.ok()) return s;
  }
  return Outcome::kRun;
}

std::vector<std::string> ConfigSchema::Names() const {
  std::vector<std::string> out;
  for (const Option& o : options_) out.push_back(o.name);
  return out;
}

std::string ConfigSchema::Help() const {
  std::string out = absl::StrCat(program_, ": ", summary_, "\n\n");
  absl::StrAppend(&out, "Usage: ", program_, " [--config FILE.yaml] [--option VALUE ...]\n\n",
                  "Every option can be set in the YAML file (key), the environment (STRATA_*)\n",
                  "or a flag; flags beat the environment, which beats the file.\n\n",
                  "  --config FILE   YAML file of option: value pairs (env STRATA_CONFIG)\n");
  for (const Option& o : options_) {
    absl::StrAppend(&out, "\n  ", FlagName(o.name), "  (yaml: ", o.name, ", env: ", EnvName(o.name),
                    ")\n      ", o.help,
                    "\n      default: ", o.default_text.empty() ? "\"\"" : o.default_text, "\n");
  }
  return out;
}

std::optional<std::string> ConfigSchema::ProcessEnv(const std::string& name) {
  const char* v = std::getenv(name.c_str());
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

}  // namespace strata
