// ConfigSchema: declarative process configuration. Each option has one snake_case name used
// three ways — YAML key `warm_bytes` (in the file given by --config), environment variable
// STRATA_WARM_BYTES and flag --warm-bytes (or --warm-bytes=VALUE). Precedence:
// flag > environment > YAML file > built-in default. Help() documents every option.
//
// Not thread-safe: build and parse once in main(). Targets must outlive the schema.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace strata {

class ConfigSchema {
 public:
  // Looks up an environment variable; returns nullopt when unset.
  using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;

  ConfigSchema(std::string program, std::string summary);

  void AddString(std::string name, std::string* target, std::string help);
  // Byte sizes: "1GiB", "64MiB", "4096" (see byte_size.h).
  void AddBytes(std::string name, uint64_t* target, std::string help);
  void AddUint(std::string name, uint64_t* target, std::string help);
  // Durations: "500ms", "30s", "2m"; a bare number is milliseconds. Stored as milliseconds.
  void AddDurationMs(std::string name, uint64_t* target, std::string help);
  // Flags accept --name, --name=true|false; YAML and environment accept true/false/1/0.
  void AddBool(std::string name, bool* target, std::string help);

  enum class Outcome { kRun, kHelp };

  // Applies YAML file, environment and flags, in that order, to the targets.
  // Returns kHelp when --help/-h was given (the caller prints Help()).
  // INVALID_ARGUMENT naming the option and its source for an unknown flag or YAML key, a
  // value that does not parse, an unreadable or malformed YAML file.
  absl::StatusOr<Outcome> Parse(int argc, const char* const* argv,
                                const EnvLookup& env = ProcessEnv);

  std::string Help() const;
  // The options' names (YAML keys), in the order they were added.
  std::vector<std::string> Names() const;

  static std::optional<std::string> ProcessEnv(const std::string& name);

 private:
  enum class Kind { kString, kBytes, kUint, kDurationMs, kBool };
  struct Option {
    std::string name;
    Kind kind;
    void* target;
    std::string help;
    std::string default_text;
  };

  void Add(std::string name, Kind kind, void* target, std::string help);
  Option* Find(std::string_view name);
  absl::Status Assign(Option& option, const std::string& value, std::string_view source);
  absl::Status ApplyYaml(const std::string& path);

  std::string program_;
  std::string summary_;
  std::vector<Option> options_;
};

// Duration text → milliseconds ("500ms", "30s", "2m", bare number = ms).
absl::StatusOr<uint64_t> ParseDurationMs(std::string_view text, std::string_view field);

}  // namespace strata
