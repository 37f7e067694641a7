// Package cpuid executes the x86 CPUID instruction, for the facts about
// the CPU that golang.org/x/sys/cpu does not report, such as the layout
// of the XSAVE area.
package cpuid

// CPUID executes the CPUID instruction for leaf and subleaf.
func CPUID(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)
