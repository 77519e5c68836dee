# Helper functions shared by every component folder.

# Warnings for our own code only (generated protobuf code is exempt).
# -Wno-missing-field-initializers: GCC 12 warns on every designated initializer that leaves a
# member out, and our option structs are meant to be written that way (each member has its
# default; an omitted one is value-initialized, never indeterminate).
function(strata_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter
                                           -Wno-missing-field-initializers)
endfunction()

# strata_library(NAME <folder> SOURCES ... PUBLIC_DEPS ... PRIVATE_DEPS ...)
# Declares strata_<folder> with alias strata::<folder>; public headers live in
# <folder>/include, private code in <folder>/src.
function(strata_library)
  cmake_parse_arguments(ARG "" "NAME" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(strata_${ARG_NAME} ${ARG_SOURCES})
  add_library(strata::${ARG_NAME} ALIAS strata_${ARG_NAME})
  target_include_directories(strata_${ARG_NAME}
    PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(strata_${ARG_NAME} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  strata_warnings(strata_${ARG_NAME})
endfunction()

# strata_test(NAME <name> SOURCES ... DEPS ... [INCLUDES dirs...] [LABELS ...] [TIMEOUT seconds])
# One gtest binary = one ctest entry, so suites that start servers start them once.
function(strata_test)
  if(NOT STRATA_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SOURCES;DEPS;LABELS;INCLUDES" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SOURCES})
  target_include_directories(${ARG_NAME} PRIVATE ${ARG_INCLUDES})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  strata_warnings(${ARG_NAME})
  add_test(NAME ${ARG_NAME} COMMAND ${ARG_NAME})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  # Sanitizer builds run several times slower; their presets set STRATA_TEST_TIMEOUT_SCALE.
  if(STRATA_TEST_TIMEOUT_SCALE GREATER 1)
    math(EXPR ARG_TIMEOUT "${ARG_TIMEOUT} * ${STRATA_TEST_TIMEOUT_SCALE}")
  endif()
  set_tests_properties(${ARG_NAME} PROPERTIES TIMEOUT ${ARG_TIMEOUT}
    LABELS "${ARG_LABELS}"
    ENVIRONMENT "STRATA_SOURCE_DIR=${PROJECT_SOURCE_DIR};STRATA_BIN_DIR=${CMAKE_RUNTIME_OUTPUT_DIRECTORY}")
endfunction()
