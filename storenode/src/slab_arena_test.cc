#include "strata/storenode/slab_arena.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata::storenode {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr uint64_t kKiB = 1024;

std::unique_ptr<SlabArena> MakeArena(uint64_t capacity, uint64_t page, bool prefault = false) {
  absl::StatusOr<std::unique_ptr<SlabArena>> arena = SlabArena::Create(capacity, page, prefault);
  EXPECT_THAT(arena, IsOk());
  return arena.ok() ? std::move(*arena) : nullptr;
}

std::vector<uint64_t> AllClasses(const SlabArena& arena) {
  std::vector<uint64_t> out;
  for (size_t c = 0; c < arena.num_classes(); ++c) {
    out.push_back(arena.ClassBytes(static_cast<uint16_t>(c)));
  }
  return out;
}

// Allocates slots of `size_class` until the arena says no; returns them in order.
std::vector<Slot> AllocateAll(SlabArena& arena, uint16_t size_class) {
  std::vector<Slot> slots;
  while (std::optional<Slot> s = arena.Allocate(size_class)) slots.push_back(*s);
  return slots;
}

TEST(SlabArenaCreateTest, ComputesPagesAndRoundsCapacityDown) {
  std::unique_ptr<SlabArena> arena = MakeArena(10 * kKiB + 100, 4 * kKiB);
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->num_pages(), 2u);
  EXPECT_EQ(arena->free_pages(), 2u);
  EXPECT_EQ(arena->page_bytes(), 4 * kKiB);
  EXPECT_EQ(arena->capacity_bytes(), 8 * kKiB);
  EXPECT_NE(arena->base(), nullptr);
  EXPECT_EQ(arena->PageClass(0), -1);
  EXPECT_EQ(arena->PageClass(1), -1);
}

TEST(SlabArenaCreateTest, ExactlyOnePageAndPrefaultWork) {
  std::unique_ptr<SlabArena> arena = MakeArena(64 * kKiB, 64 * kKiB, /*prefault=*/true);
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->num_pages(), 1u);
  EXPECT_EQ(arena->capacity_bytes(), 64 * kKiB);
  // Prefaulted anonymous memory reads as zero and is writable end to end.
  uint8_t* base = arena->base();
  EXPECT_EQ(base[0], 0);
  EXPECT_EQ(base[64 * kKiB - 1], 0);
  std::memset(base, 0x5a, 64 * kKiB);
  EXPECT_EQ(base[64 * kKiB - 1], 0x5a);
}

TEST(SlabArenaCreateTest, RejectsCapacityBelowOnePage) {
  EXPECT_THAT(SlabArena::Create(64 * kKiB - 64, 64 * kKiB, false),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("holds no page")));
  EXPECT_THAT(SlabArena::Create(0, 4 * kKiB, false), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(SlabArenaCreateTest, RejectsPageNotMultipleOf64) {
  for (uint64_t page :
       {uint64_t{0}, uint64_t{1}, uint64_t{32}, uint64_t{96}, uint64_t{100}, 4 * kKiB + 32}) {
    EXPECT_THAT(SlabArena::Create(1 << 20, page, false),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("multiple of 64")))
        << "page_bytes " << page;
  }
  // Smallest legal page: one 64-byte class.
  std::unique_ptr<SlabArena> arena = MakeArena(256, 64);
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->num_pages(), 4u);
  EXPECT_THAT(AllClasses(*arena), ElementsAreArray({uint64_t{64}}));
}

TEST(SlabArenaCreateTest, MappingFailureIsResourceExhausted) {
  // 128 TiB is the whole user address space on x86-64 / arm64 (47/48-bit), so mmap fails.
  // A 1 GiB page keeps the bookkeeping tiny should a machine map it anyway.
  EXPECT_THAT(SlabArena::Create(uint64_t{1} << 47, uint64_t{1} << 30, false),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("mmap")));
}

TEST(SlabArenaClassTest, ExactClassTableFor64KiBPages) {
  std::unique_ptr<SlabArena> arena = MakeArena(64 * kKiB, 64 * kKiB);
  ASSERT_NE(arena, nullptr);
  // 64 B * 2^(k/4), rounded up to 64 B, duplicates dropped, page size last.
  const std::vector<uint64_t> expected = {
      64,   128,   192,   256,   320,   384,   448,   512,   640,   768,   896,   1024,
      1280, 1472,  1728,  2048,  2496,  2944,  3456,  4096,  4928,  5824,  6912,  8192,
      9792, 11648, 13824, 16384, 19520, 23232, 27584, 32768, 38976, 46400, 55168, 65536};
  EXPECT_THAT(AllClasses(*arena), ElementsAreArray(expected));
}

TEST(SlabArenaClassTest, ClassesAreMultiplesOf64GrowingByFourthRootOfTwo) {
  for (uint64_t page : {4 * kKiB, uint64_t{6400}, 64 * kKiB, 1024 * kKiB, 16 * 1024 * kKiB}) {
    SCOPED_TRACE(page);
    std::unique_ptr<SlabArena> arena = MakeArena(page, page);
    ASSERT_NE(arena, nullptr);
    std::vector<uint64_t> classes = AllClasses(*arena);
    ASSERT_GE(classes.size(), 1u);
    EXPECT_EQ(classes.front(), 64u);
    EXPECT_EQ(classes.back(), page);  // the page size is always the last class
    for (size_t i = 0; i < classes.size(); ++i) {
      EXPECT_EQ(classes[i] % 64, 0u) << "class " << i;
      if (i == 0) continue;
      EXPECT_GT(classes[i], classes[i - 1]) << "class " << i;
      // One step of 2^(1/4), plus at most one 64-byte rounding unit.
      EXPECT_LE(static_cast<double>(classes[i]),
                static_cast<double>(classes[i - 1]) * std::pow(2.0, 0.25) + 64.0)
          << "class " << i;
    }
    // Every power of two from 64 B to the page is a class of its own.
    for (uint64_t p2 = 64; p2 <= page; p2 *= 2) {
      EXPECT_EQ(arena->ClassBytes(arena->ClassFor(p2)), p2) << p2;
    }
  }
  std::unique_ptr<SlabArena> odd = MakeArena(6400, 6400);
  ASSERT_NE(odd, nullptr);
  // A page that is not a power of two is still the last class, after 4096 < 4928 < 5824.
  std::vector<uint64_t> classes = AllClasses(*odd);
  ASSERT_EQ(classes.size(), 23u);
  EXPECT_EQ(classes[20], 4928u);
  EXPECT_EQ(classes[21], 5824u);
  EXPECT_EQ(classes[22], 6400u);
}

TEST(SlabArenaClassTest, ClassForBoundaries) {
  std::unique_ptr<SlabArena> arena = MakeArena(64 * kKiB, 64 * kKiB);
  ASSERT_NE(arena, nullptr);
  struct Case {
    uint64_t size;
    uint64_t class_bytes;
  };
  for (const Case& c : {Case{1, 64}, Case{63, 64}, Case{64, 64}, Case{65, 128}, Case{128, 128},
                        Case{129, 192}, Case{1024, 1024}, Case{1025, 1280}, Case{1280, 1280},
                        Case{1281, 1472}, Case{4096, 4096}, Case{4097, 4928}, Case{55168, 55168},
                        Case{55169, 65536}, Case{65535, 65536}, Case{65536, 65536}}) {
    EXPECT_EQ(arena->ClassBytes(arena->ClassFor(c.size)), c.class_bytes) << "size " << c.size;
  }
  EXPECT_EQ(arena->ClassFor(1), 0);
  EXPECT_EQ(static_cast<size_t>(arena->ClassFor(64 * kKiB)), arena->num_classes() - 1);
  // Every size lands in the smallest class that holds it, wasting < 2^(1/4)-1 plus 64 B.
  for (uint64_t size = 1; size <= 64 * kKiB; ++size) {
    uint16_t c = arena->ClassFor(size);
    ASSERT_GE(arena->ClassBytes(c), size);
    if (c > 0) {
      ASSERT_LT(arena->ClassBytes(c - 1), size) << "size " << size;
    }
    ASSERT_LT(static_cast<double>(arena->ClassBytes(c) - size),
              static_cast<double>(size) * (std::pow(2.0, 0.25) - 1.0) + 64.0)
        << "size " << size;
  }
}

TEST(SlabArenaAllocateTest, SlotsPerPageIsFloorOfPageOverClass) {
  std::unique_ptr<SlabArena> arena = MakeArena(4 * kKiB, 4 * kKiB);
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->SlotsPerPage(arena->ClassFor(64)), 64u);
  EXPECT_EQ(arena->SlotsPerPage(arena->ClassFor(1472)), 2u);  // 1152 bytes of tail unused
  EXPECT_EQ(arena->SlotsPerPage(arena->ClassFor(2049)), 1u);
  EXPECT_EQ(arena->SlotsPerPage(arena->ClassFor(4096)), 1u);
}

TEST(SlabArenaAllocateTest, AllocatesUntilExhaustedWithDistinctInBoundsSlots) {
  std::unique_ptr<SlabArena> arena = MakeArena(4 * 4 * kKiB, 4 * kKiB);
  ASSERT_NE(arena, nullptr);
  const uint16_t cls = arena->ClassFor(1472);  // 2 slots per page, unused tail
  std::vector<Slot> slots = AllocateAll(*arena, cls);
  ASSERT_EQ(slots.size(), 8u);
  EXPECT_EQ(arena->free_pages(), 0u);
  EXPECT_FALSE(arena->Allocate(cls).has_value());
  // Any other class is out of luck too: there is no free page.
  EXPECT_FALSE(arena->Allocate(arena->ClassFor(64)).has_value());
  EXPECT_FALSE(arena->Allocate(arena->ClassFor(4096)).has_value());

  std::vector<std::pair<uint8_t*, uint8_t*>> ranges;
  for (const Slot& s : slots) {
    EXPECT_EQ(s.size_class, cls);
    EXPECT_LT(s.page, 4u);
    EXPECT_LT(s.index, 2u);
    EXPECT_EQ(arena->PageClass(s.page), cls);
    uint8_t* p = arena->Address(s);
    EXPECT_EQ(p, arena->base() + s.page * 4 * kKiB + s.index * 1472);
    ranges.push_back({p, p + 1472});
  }
  std::sort(ranges.begin(), ranges.end());
  EXPECT_GE(ranges.front().first, arena->base());
  EXPECT_LE(ranges.back().second, arena->base() + arena->capacity_bytes());
  for (size_t i = 1; i < ranges.size(); ++i) {
    EXPECT_LE(ranges[i - 1].second, ranges[i].first) << "slots " << i - 1 << " and " << i;
  }
  // Writing each slot full of its own byte leaves every other slot intact.
  for (size_t i = 0; i < slots.size(); ++i) {
    std::memset(arena->Address(slots[i]), static_cast<int>(i + 1), 1472);
  }
  for (size_t i = 0; i < slots.size(); ++i) {
    const uint8_t* p = arena->Address(slots[i]);
    EXPECT_TRUE(std::all_of(p, p + 1472, [&](uint8_t b) {
      return static_cast<size_t>(b) == i + 1;
    })) << i;
  }
}

TEST(SlabArenaAllocateTest, SmallClassFillsWholePagesBeforeTakingAnother) {
  std::unique_ptr<SlabArena> arena = MakeArena(3 * 4 * kKiB, 4 * kKiB);
  ASSERT_NE(arena, nullptr);
  const uint16_t cls = arena->ClassFor(64);
  std::optional<Slot> first = arena->Allocate(cls);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(arena->free_pages(), 2u);
  for (int i = 1; i < 64; ++i) {
    std::optional<Slot> s = arena->Allocate(cls);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->page, first->page);
  }
  EXPECT_EQ(arena->free_pages(), 2u);
  std::optional<Slot> next = arena->Allocate(cls);
  ASSERT_TRUE(next.has_value());
  EXPECT_NE(next->page, first->page);
  EXPECT_EQ(arena->free_pages(), 1u);
  std::vector<Slot> rest = AllocateAll(*arena, cls);
  EXPECT_EQ(rest.size(), 127u);  // 63 more on the second page, 64 on the third
  EXPECT_EQ(arena->free_pages(), 0u);
}

TEST(SlabArenaFreeTest, FreedSlotIsReusedAndPageKeepsItsClass) {
  std::unique_ptr<SlabArena> arena = MakeArena(4 * kKiB, 4 * kKiB);
  ASSERT_NE(arena, nullptr);
  const uint16_t cls = arena->ClassFor(1024);
  std::vector<Slot> slots = AllocateAll(*arena, cls);
  ASSERT_EQ(slots.size(), 4u);
  arena->Free(slots[2]);
  EXPECT_EQ(arena->PageClass(slots[2].page), cls);  // 3 slots still in use
  EXPECT_EQ(arena->free_pages(), 0u);
  EXPECT_FALSE(arena->Allocate(arena->ClassFor(64)).has_value());
  std::optional<Slot> again = arena->Allocate(cls);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->page, slots[2].page);
  EXPECT_EQ(again->index, slots[2].index);
  EXPECT_EQ(arena->Address(*again), arena->Address(slots[2]));
  EXPECT_FALSE(arena->Allocate(cls).has_value());
}

TEST(SlabArenaFreeTest, EmptyPageReturnsToPoolForAnotherClass) {
  std::unique_ptr<SlabArena> arena = MakeArena(2 * 4 * kKiB, 4 * kKiB);
  ASSERT_NE(arena, nullptr);
  const uint16_t small = arena->ClassFor(256);
  const uint16_t big = arena->ClassFor(4096);
  std::vector<Slot> slots = AllocateAll(*arena, small);
  ASSERT_EQ(slots.size(), 32u);
  EXPECT_FALSE(arena->Allocate(big).has_value());

  const uint32_t victim = slots.front().page;
  std::vector<Slot> on_victim;
  for (const Slot& s : slots) {
    if (s.page == victim) on_victim.push_back(s);
  }
  ASSERT_EQ(on_victim.size(), 16u);
  for (size_t i = 0; i + 1 < on_victim.size(); ++i) {
    arena->Free(on_victim[i]);
    EXPECT_EQ(arena->free_pages(), 0u) << "page returned with a slot still in use";
    EXPECT_EQ(arena->PageClass(victim), small);
  }
  EXPECT_FALSE(arena->Allocate(big).has_value());
  arena->Free(on_victim.back());
  EXPECT_EQ(arena->free_pages(), 1u);
  EXPECT_EQ(arena->PageClass(victim), -1);

  std::optional<Slot> whole = arena->Allocate(big);
  ASSERT_TRUE(whole.has_value());
  EXPECT_EQ(whole->page, victim);
  EXPECT_EQ(whole->index, 0u);
  EXPECT_EQ(whole->size_class, big);
  EXPECT_EQ(arena->PageClass(victim), big);
  EXPECT_EQ(arena->Address(*whole), arena->base() + victim * 4 * kKiB);
  EXPECT_EQ(arena->free_pages(), 0u);
  // The small class has no partial page left, so it cannot allocate either.
  EXPECT_FALSE(arena->Allocate(small).has_value());

  // Back to the small class: the page is re-cut into fresh 256-byte slots.
  arena->Free(*whole);
  EXPECT_EQ(arena->PageClass(victim), -1);
  std::vector<Slot> recut = AllocateAll(*arena, small);
  ASSERT_EQ(recut.size(), 16u);
  std::vector<uint32_t> indexes;
  for (const Slot& s : recut) {
    EXPECT_EQ(s.page, victim);
    indexes.push_back(s.index);
  }
  std::sort(indexes.begin(), indexes.end());
  for (uint32_t i = 0; i < 16; ++i) EXPECT_EQ(indexes[i], i);
}

TEST(SlabArenaFreeTest, FreeingEverythingRestoresTheWholePool) {
  std::unique_ptr<SlabArena> arena = MakeArena(4 * 4 * kKiB, 4 * kKiB);
  ASSERT_NE(arena, nullptr);
  std::vector<Slot> mixed;
  for (uint64_t size : {64u, 1472u, 4096u}) {
    std::optional<Slot> s = arena->Allocate(arena->ClassFor(size));
    ASSERT_TRUE(s.has_value());
    mixed.push_back(*s);
  }
  EXPECT_EQ(arena->free_pages(), 1u);  // each class took a page of its own
  EXPECT_NE(mixed[0].page, mixed[1].page);
  EXPECT_NE(mixed[1].page, mixed[2].page);
  for (const Slot& s : mixed) arena->Free(s);
  EXPECT_EQ(arena->free_pages(), 4u);
  for (uint32_t p = 0; p < 4; ++p) EXPECT_EQ(arena->PageClass(p), -1);
  EXPECT_EQ(AllocateAll(*arena, arena->ClassFor(4096)).size(), 4u);
}

}  // namespace
}  // namespace strata::storenode
