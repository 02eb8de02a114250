// Errors raised by pg_idem's plain C++ code.
//
// This file never includes PostgreSQL headers. An idem::Error carries its
// SQLSTATE as five characters so that the boundary (src/pg/guard.hpp) can hand
// PostgreSQL the real code instead of XX000.
#pragma once

#include <exception>
#include <string>

namespace idem {

class Error : public std::exception {
public:
    Error(const char* sqlstate, std::string message, std::string hint = {})
        : message_(std::move(message)), hint_(std::move(hint))
    {
        for (int i = 0; i < 5; i++)
            sqlstate_[i] = sqlstate[i];
        sqlstate_[5] = '\0';
    }

    const char* what() const noexcept override { return message_.c_str(); }
    const char* sqlstate() const noexcept { return sqlstate_; }
    const std::string& hint() const noexcept { return hint_; }

private:
    char sqlstate_[6];
    std::string message_;
    std::string hint_;
};

// The SQLSTATEs pg_idem raises from plain C++ code, by name.
namespace sqlstate {
inline constexpr const char* null_value_not_allowed = "22004";
inline constexpr const char* invalid_parameter_value = "22023";
inline constexpr const char* string_data_right_truncation = "22001";
}  // namespace sqlstate

}  // namespace idem
