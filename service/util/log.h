// Minimal line logger for the service: `LOG_INFO() << "loaded " << n << " rows";`
// Each statement emits one line to stderr ("I 2026-11-25T10:00:00.123Z message"), written with
// one call so lines from different threads never interleave.
#ifndef LMHEAD_SERVICE_UTIL_LOG_H_
#define LMHEAD_SERVICE_UTIL_LOG_H_

#include <sstream>

namespace lmhead {

class LogLine {
 public:
  explicit LogLine(char severity) : severity_(severity) {}
  ~LogLine();
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;
  template <typename T>
  LogLine& operator<<(const T& v) {
    stream_ << v;
    return *this;
  }

 private:
  char severity_;
  std::ostringstream stream_;
};

}  // namespace lmhead

#define LOG_INFO() ::lmhead::LogLine('I')
#define LOG_WARNING() ::lmhead::LogLine('W')
#define LOG_ERROR() ::lmhead::LogLine('E')

#endif  // LMHEAD_SERVICE_UTIL_LOG_H_
