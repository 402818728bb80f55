/* libjpeg-turbo 3.2.0's src/jconfig.h.in as its default build fills it in (the jpeg62 ABI, 8-bit
 * samples, Linux): what flow/_jpeg_window.c needs to lay out libjpeg's structures as the library does. */
#define JPEG_LIB_VERSION  62
#define LIBJPEG_TURBO_VERSION  3.2.0
#define LIBJPEG_TURBO_VERSION_NUMBER  3002000
#define C_ARITH_CODING_SUPPORTED 1
#define D_ARITH_CODING_SUPPORTED 1
#define MEM_SRCDST_SUPPORTED  1
#define WITH_SIMD 1
#ifndef BITS_IN_JSAMPLE
#define BITS_IN_JSAMPLE  8
#endif
